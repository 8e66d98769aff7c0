-- CA rotation (postgres; the other dialect's file is the same schema). Several CAs: each is in the
-- trust bundle (hosts, SVIDs, the server's client-certificate check) from its creation, signs
-- from `activates_at` (the newest activated one signs: the server certificate, host
-- certificates, X.509-SVIDs), and leaves the bundle from `retired_at`, when its private key is
-- also erased. The one CA there was becomes the first, active since always.
CREATE TABLE certificate_authorities (
    id           TEXT PRIMARY KEY,
    cert_pem     TEXT NOT NULL,
    key_pem      TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    activates_at BIGINT NOT NULL,
    retired_at   BIGINT
);
INSERT INTO certificate_authorities (id, cert_pem, key_pem, created_at, activates_at)
    SELECT substr(md5(random()::text), 1, 16), cert_pem, key_pem, 0, 0 FROM certificate_authority;
DROP TABLE certificate_authority;
