-- agentd control plane, schema version 1 (SQLite). migrations/postgres/0001_init.sql is the
-- same schema in PostgreSQL's dialect: same tables, columns, keys and append-only rule.
-- Times are Unix seconds; structured fields are JSON text.

CREATE TABLE blueprints (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE agents (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    description      TEXT NOT NULL,
    blueprint        TEXT NOT NULL REFERENCES blueprints (name),
    attributes       TEXT NOT NULL,
    metadata         TEXT NOT NULL,
    governance       TEXT NOT NULL,
    offline_behavior TEXT NOT NULL,
    state            TEXT NOT NULL,
    disabled_reason  TEXT NOT NULL,
    expires_at       BIGINT,
    last_reconfirm_at BIGINT NOT NULL,
    last_active_at   BIGINT,
    orphaned         BIGINT NOT NULL DEFAULT 0,
    -- Optimistic concurrency between replicas: every update checks and bumps it.
    revision         BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

CREATE TABLE agent_principals (
    agent_id  TEXT NOT NULL REFERENCES agents (id),
    relation  TEXT NOT NULL,
    principal TEXT NOT NULL,
    PRIMARY KEY (agent_id, relation, principal)
);
CREATE INDEX agent_principals_principal ON agent_principals (principal);

CREATE TABLE alerts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    agent_id   TEXT NOT NULL,
    message    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE access_packages (
    id           TEXT PRIMARY KEY,
    agent_id     TEXT NOT NULL REFERENCES agents (id),
    spec         TEXT NOT NULL,
    stages       TEXT NOT NULL,
    state        TEXT NOT NULL,
    starts_at    BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    requested_by TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX access_packages_agent ON access_packages (agent_id);

CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    principal  TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    used_by     TEXT
);

CREATE TABLE hosts (
    id                TEXT PRIMARY KEY,
    hostname          TEXT NOT NULL,
    agentd_version    TEXT NOT NULL,
    enrolled_at       BIGINT NOT NULL,
    last_heartbeat_at BIGINT,
    revoked_at        BIGINT,
    revoke_reason     TEXT NOT NULL DEFAULT '',
    cert_serial       TEXT
);

CREATE TABLE host_agents (
    host_id     TEXT NOT NULL REFERENCES hosts (id),
    agent_id    TEXT NOT NULL,
    reported_at BIGINT NOT NULL,
    PRIMARY KEY (host_id, agent_id)
);

-- The control-plane CA, shared by every replica (one row).
CREATE TABLE certificate_authority (
    id       BIGINT PRIMARY KEY CHECK (id = 1),
    cert_pem TEXT NOT NULL,
    key_pem  TEXT NOT NULL
);

CREATE TABLE audit_events (
    sequence    INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    previous    TEXT,
    current     TEXT
);
CREATE INDEX audit_events_target ON audit_events (target_type, target_id);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
