-- Bound host identities (issue 17 item 6), SQLite.
-- migrations/postgres/0004_host_identity.sql is the same schema in the other dialect.

-- A join token may name the hostname it enrols ('' = any) and the labels the host gets.
ALTER TABLE join_tokens ADD COLUMN hostname TEXT NOT NULL DEFAULT '';
ALTER TABLE join_tokens ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';

-- Enrolment looks hosts up by name.
CREATE INDEX hosts_hostname ON hosts (hostname);
