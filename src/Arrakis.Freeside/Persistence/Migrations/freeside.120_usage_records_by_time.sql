-- The usage report (GET /api/v1/communities/{id}/usage) pages a community's month newest first by (created_at, id).
-- This index serves that order, and every lookup the (community_id, month) index served before, which it replaces.
CREATE INDEX IF NOT EXISTS usage_records_month_time ON usage_records (community_id, month, created_at, id);
DROP INDEX IF EXISTS usage_records_month;
