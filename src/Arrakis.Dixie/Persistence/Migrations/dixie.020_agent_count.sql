-- The number of agents with a score, kept up to date as agents are first scored, so that /api/health reads one row
-- instead of counting every agent (COUNT(*) over reputation_scores took 108–157 ms at 250,000 agents on PostgreSQL,
-- and it grows with every agent). Seeded from the rows already there.
CREATE TABLE IF NOT EXISTS reputation_counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO reputation_counters (name, value)
SELECT 'agents', COUNT(*) FROM reputation_scores WHERE model = '';
