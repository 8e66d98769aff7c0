-- The audit log's hash chain (issue 17), SQLite. migrations/postgres/0003_audit_chain.sql is
-- the same schema in PostgreSQL's dialect. Each entry written from now on records its position
-- in the chain, the digest of the entry before it and its own digest (src/audit_chain.rs has
-- the canonical encoding). Entries written before this migration keep NULL in these columns:
-- they are sealed by the first chained entry, whose previous_digest is the genesis digest over
-- all of them (docs/control-plane.md, "The audit chain").

ALTER TABLE audit_events ADD COLUMN chain_index BIGINT;
ALTER TABLE audit_events ADD COLUMN previous_digest TEXT;
ALTER TABLE audit_events ADD COLUMN digest TEXT;
CREATE UNIQUE INDEX audit_events_chain_index ON audit_events (chain_index);

-- The head of the chain (one row): how many chained entries there are and the digest of the
-- last one ('' before the first). Every append locks it first (an UPDATE), so appends are
-- serialized and the chain cannot fork; verify compares the log against it.
CREATE TABLE audit_chain_head (
    id      BIGINT PRIMARY KEY CHECK (id = 1),
    entries BIGINT NOT NULL,
    digest  TEXT NOT NULL
);
INSERT INTO audit_chain_head (id, entries, digest) VALUES (1, 0, '');

-- The head only moves forward: one entry at a time, and it is never deleted.
CREATE TRIGGER audit_chain_head_forward BEFORE UPDATE ON audit_chain_head
WHEN NEW.entries <> OLD.entries AND NEW.entries <> OLD.entries + 1
BEGIN
    SELECT RAISE(ABORT, 'the audit chain head only moves forward');
END;
CREATE TRIGGER audit_chain_head_no_delete BEFORE DELETE ON audit_chain_head
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
