-- x402 payments: one row per EIP-3009 authorization (or legacy proof transaction). The unique keys make exactly one
-- settlement and one credit note per payment, whatever the concurrency.
CREATE TABLE x402_payments (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    x402_version BIGINT NOT NULL,
    network TEXT NOT NULL,
    asset TEXT NOT NULL,
    payer TEXT NOT NULL,
    nonce TEXT NOT NULL,
    payment_identifier TEXT NULL,
    payload_hash TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    requirement_json TEXT NOT NULL,
    amount_required_micro BIGINT NOT NULL,
    value_micro BIGINT NOT NULL,
    community_id TEXT NULL,
    state TEXT NOT NULL,
    tx_hash TEXT NULL,
    raw_tx TEXT NULL,
    cost_micro BIGINT NULL,
    invoke_body TEXT NULL,
    error TEXT NULL,
    credit_note_id TEXT NULL,
    credit_lot_id TEXT NULL,
    credit_micro BIGINT NULL,
    credit_granted BIGINT NOT NULL DEFAULT 0,
    response_status BIGINT NULL,
    response_json TEXT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT ux_x402_payments_authorization UNIQUE (network, asset, payer, nonce),
    CONSTRAINT ux_x402_payments_tx UNIQUE (tx_hash),
    CONSTRAINT ux_x402_payments_identifier UNIQUE (payment_identifier),
    CONSTRAINT ux_x402_payments_credit_note UNIQUE (credit_note_id)
);

CREATE INDEX ix_x402_payments_state ON x402_payments (state, updated_at);
