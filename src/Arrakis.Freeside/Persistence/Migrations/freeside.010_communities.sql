-- Communities, the tenant aliases that map a token's tenant_id to one, and agents.
CREATE TABLE IF NOT EXISTS communities (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    tier TEXT NOT NULL CHECK (tier IN ('free','pro','enterprise')),
    monthly_budget_cents BIGINT NOT NULL CHECK (monthly_budget_cents >= 0),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS tenant_aliases (
    tenant_id TEXT PRIMARY KEY,
    community_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    community_id TEXT NOT NULL REFERENCES communities (id),
    nft_contract TEXT NOT NULL,
    nft_token_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
