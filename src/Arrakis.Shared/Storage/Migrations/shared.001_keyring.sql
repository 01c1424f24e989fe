CREATE TABLE IF NOT EXISTS signing_keys (
    kid TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('pending','active','retired','revoked')),
    private_key_enc TEXT NOT NULL,
    public_x TEXT NOT NULL,
    public_y TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    promote_at BIGINT NULL,
    activated_at BIGINT NULL,
    retired_at BIGINT NULL,
    revoked_at BIGINT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS signing_keys_one_active ON signing_keys (status) WHERE status = 'active';
