-- A key that can no longer sign keeps no private key: revocation destroys it at once, and a retired key's is destroyed
-- when the key leaves the JWKS. The row stays (kid, status, timestamps, public point) for 'loa keys list' and audits.
-- SQLite cannot drop NOT NULL from a column, so the table is rebuilt (in the migration's transaction).
CREATE TABLE signing_keys_002 (
    kid TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('pending','active','retired','revoked')),
    private_key_enc TEXT NULL,
    public_x TEXT NOT NULL,
    public_y TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    promote_at BIGINT NULL,
    activated_at BIGINT NULL,
    retired_at BIGINT NULL,
    revoked_at BIGINT NULL,
    CONSTRAINT signing_keys_private_key_while_signing CHECK (private_key_enc IS NOT NULL OR status IN ('retired', 'revoked'))
);
INSERT INTO signing_keys_002 (kid, status, private_key_enc, public_x, public_y, created_at, promote_at, activated_at, retired_at, revoked_at)
SELECT kid, status, CASE WHEN status = 'revoked' THEN NULL ELSE private_key_enc END, public_x, public_y, created_at, promote_at, activated_at, retired_at, revoked_at
FROM signing_keys;
DROP TABLE signing_keys;
ALTER TABLE signing_keys_002 RENAME TO signing_keys;
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (status) WHERE status = 'active';
