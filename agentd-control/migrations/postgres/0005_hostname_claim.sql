-- Hostnames unique among active hosts, enforced by the database (issue 17 item 6), PostgreSQL.
-- migrations/sqlite/0005_hostname_claim.sql is the same schema in the other dialect.
--
-- Enrolment checks the name first and says why it refuses; this index makes the rule hold
-- when two replicas enrol the same name at once. A host's claim is its hostname while it is
-- not revoked. Hosts enrolled before this migration claim theirs where no other live host has
-- the same name. Live duplicates from before hostnames were checked keep no claim: they stay
-- as they were, and enrolment's own check still refuses another host with their name.
ALTER TABLE hosts ADD COLUMN hostname_claim TEXT;

UPDATE hosts SET hostname_claim = hostname
WHERE revoked_at IS NULL
  AND hostname IN (
    SELECT hostname FROM hosts WHERE revoked_at IS NULL GROUP BY hostname HAVING COUNT(*) = 1
  );

CREATE UNIQUE INDEX hosts_hostname_claim ON hosts (hostname_claim) WHERE revoked_at IS NULL;
