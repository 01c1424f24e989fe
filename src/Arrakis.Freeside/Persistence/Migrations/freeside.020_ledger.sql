-- TigerBeetle-style ledger: accounts carry the four balance columns, transfers are immutable.
CREATE TABLE IF NOT EXISTS ledger_accounts (
    id TEXT PRIMARY KEY,
    community_id TEXT NOT NULL REFERENCES communities (id),
    code TEXT NOT NULL CHECK (code IN ('wallet','spend','issuance','expired')),
    debits_pending BIGINT NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    debits_posted BIGINT NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_pending BIGINT NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    credits_posted BIGINT NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    CHECK (code <> 'wallet' OR debits_posted + debits_pending <= credits_posted)
);
CREATE INDEX IF NOT EXISTS ledger_accounts_community ON ledger_accounts (community_id);
CREATE TABLE IF NOT EXISTS ledger_transfers (
    id TEXT PRIMARY KEY,
    community_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('grant','pending','post','void','expire','lot_expiry')),
    debit_account_id TEXT NOT NULL,
    credit_account_id TEXT NOT NULL,
    amount_micro BIGINT NOT NULL CHECK (amount_micro >= 0),
    pending_id TEXT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_transfers_community ON ledger_transfers (community_id);
-- One row per community and UTC month; the CHECK is C1, so even a buggy writer cannot overspend.
CREATE TABLE IF NOT EXISTS budget_months (
    community_id TEXT NOT NULL REFERENCES communities (id),
    month TEXT NOT NULL,
    limit_micro BIGINT NOT NULL CHECK (limit_micro >= 0),
    committed_micro BIGINT NOT NULL DEFAULT 0 CHECK (committed_micro >= 0),
    reserved_micro BIGINT NOT NULL DEFAULT 0 CHECK (reserved_micro >= 0),
    PRIMARY KEY (community_id, month),
    CHECK (committed_micro + reserved_micro <= limit_micro)
);
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    community_id TEXT NOT NULL REFERENCES communities (id),
    month TEXT NOT NULL,
    amount_micro BIGINT NOT NULL CHECK (amount_micro > 0),
    status TEXT NOT NULL CHECK (status IN ('pending','posted','voided','expired')),
    actual_micro BIGINT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    resolved_at BIGINT NULL
);
CREATE INDEX IF NOT EXISTS reservations_pending ON reservations (status, expires_at);
CREATE TABLE IF NOT EXISTS credit_lots (
    id TEXT PRIMARY KEY,
    community_id TEXT NOT NULL REFERENCES communities (id),
    source TEXT NOT NULL CHECK (source IN ('purchase','grant','seed','x402','transfer_in')),
    amount_micro BIGINT NOT NULL CHECK (amount_micro > 0),
    remaining_micro BIGINT NOT NULL CHECK (remaining_micro >= 0),
    expires_at BIGINT NULL,
    created_at BIGINT NOT NULL,
    CHECK (remaining_micro <= amount_micro)
);
CREATE INDEX IF NOT EXISTS credit_lots_community ON credit_lots (community_id, remaining_micro);
CREATE TABLE IF NOT EXISTS lot_entries (
    lot_id TEXT NOT NULL,
    transfer_id TEXT NOT NULL,
    community_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('credit','debit','expiry')),
    amount_micro BIGINT NOT NULL CHECK (amount_micro > 0),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (lot_id, transfer_id)
);
CREATE INDEX IF NOT EXISTS lot_entries_community ON lot_entries (community_id);
CREATE TABLE IF NOT EXISTS usage_records (
    id TEXT PRIMARY KEY,
    community_id TEXT NOT NULL,
    month TEXT NOT NULL,
    agent_id TEXT NULL,
    pool TEXT NULL,
    model TEXT NULL,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_micro BIGINT NOT NULL CHECK (cost_micro >= 0),
    trace_id TEXT NULL,
    idempotency_key TEXT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_records_month ON usage_records (community_id, month);
CREATE INDEX IF NOT EXISTS usage_records_trace ON usage_records (trace_id);
CREATE INDEX IF NOT EXISTS usage_records_agent ON usage_records (agent_id, created_at);
CREATE INDEX IF NOT EXISTS ledger_transfers_pending ON ledger_transfers (pending_id);
