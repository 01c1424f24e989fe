-- Quality events waiting for (or done with) delivery to dixie. payload is the exact JSON body sent; event_id makes
-- redelivery idempotent at dixie, so at-least-once delivery here is exactly-once in the scores.
CREATE TABLE IF NOT EXISTS quality_outbox (
    event_id TEXT PRIMARY KEY,
    routing_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    submitted_by TEXT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending','delivered','dead')),
    attempts BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    delivered_at BIGINT NULL,
    last_error TEXT NULL
);
CREATE INDEX IF NOT EXISTS quality_outbox_due ON quality_outbox (status, next_attempt_at);
