-- Reputation event log: event_id is the idempotency key (the primary key makes concurrent duplicates fail, not race).
CREATE TABLE IF NOT EXISTS reputation_events (
    event_id TEXT PRIMARY KEY,
    routing_key TEXT NOT NULL,
    payload_hash TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    source TEXT NOT NULL,
    model TEXT NULL,
    pool TEXT NULL,
    trace_id TEXT NULL,
    occurred_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reputation_events_by_key ON reputation_events (routing_key, received_at);

-- Decayed Beta evidence per agent (model = '') and per (agent, model). alpha/beta exclude the Beta(1,1) prior and are
-- already decayed to updated_at; readers decay them further to "now" without touching the event log.
CREATE TABLE IF NOT EXISTS reputation_scores (
    routing_key TEXT NOT NULL,
    model TEXT NOT NULL,
    alpha DOUBLE PRECISION NOT NULL,
    beta DOUBLE PRECISION NOT NULL,
    event_count BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (routing_key, model)
);
