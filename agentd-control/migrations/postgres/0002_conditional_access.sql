-- Conditional Access (issue 8), PostgreSQL. migrations/sqlite/0002_conditional_access.sql is the
-- same schema in SQLite's dialect.

-- The latest version of each policy; every version (the document as submitted) is kept in
-- policy_versions, also after the policy is deleted.
CREATE TABLE policies (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    state      TEXT NOT NULL,
    version    BIGINT NOT NULL,
    managed    BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE policy_versions (
    policy_id  TEXT NOT NULL,
    version    BIGINT NOT NULL,
    name       TEXT NOT NULL,
    state      TEXT NOT NULL,
    document   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (policy_id, version)
);

CREATE TABLE detections (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id    TEXT NOT NULL,
    host_id     TEXT NOT NULL,
    rule        TEXT NOT NULL,
    severity    TEXT NOT NULL,
    detected_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    summary     TEXT NOT NULL
);
CREATE INDEX detections_agent ON detections (agent_id, detected_at);

-- The latest administrator confirmation per agent (compromised or safe). Confirming safe
-- ignores the agent's detections up to last_detection_id.
CREATE TABLE risk_confirmations (
    agent_id          TEXT PRIMARY KEY,
    confirmation      TEXT NOT NULL,
    reason            TEXT NOT NULL,
    confirmed_by      TEXT NOT NULL,
    confirmed_at      BIGINT NOT NULL,
    last_detection_id BIGINT NOT NULL
);

-- The control-plane-wide decision version counter (one row).
CREATE TABLE decision_counter (
    id      BIGINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO decision_counter (id, version) VALUES (1, 0);

-- The current decision set of each host: its version and a digest of its content. A new
-- version is allocated only when the content changes.
CREATE TABLE host_decisions (
    host_id   TEXT PRIMARY KEY,
    version   BIGINT NOT NULL,
    digest    TEXT NOT NULL,
    issued_at BIGINT NOT NULL
);

ALTER TABLE hosts ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE hosts ADD COLUMN applied_decision_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN applied_at BIGINT;
