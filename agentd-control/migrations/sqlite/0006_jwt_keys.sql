-- Keys that sign agents' JWT-SVIDs (sqlite; the other dialect's file is the same schema). The
-- newest signs; every one is published in the JWKS, so that a token signed before a rotation
-- still verifies. The private key never leaves the database and the control plane.
CREATE TABLE jwt_signing_keys (
    kid        TEXT PRIMARY KEY,
    key_pem    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
