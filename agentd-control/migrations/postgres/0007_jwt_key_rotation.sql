-- JWT signing-key rotation (postgres; the other dialect's file is the same schema). A key is
-- published from its creation, signs from `activates_at` (the newest activated key signs), and
-- is no longer published from `retired_at`, when its private key is also erased.
ALTER TABLE jwt_signing_keys ADD COLUMN activates_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jwt_signing_keys ADD COLUMN retired_at BIGINT;
UPDATE jwt_signing_keys SET activates_at = created_at;
