-- Every finalize debits a credit lot, and every finalize moves a reservation out of 'pending'. Indexes that contain
-- the columns those updates change cost a new index entry per call, and on PostgreSQL they rule out HOT updates: the
-- lot's old row versions then pile up in its page and its indexes until a vacuum, and the lot lookup of every
-- following finalize reads through them (a community's one lot grew to 60 pages in 17,000 calls).
-- credit_lots: look lots up by community only (a community has a handful); remaining_micro is filtered on the rows.
DROP INDEX IF EXISTS credit_lots_community;
CREATE INDEX IF NOT EXISTS credit_lots_community ON credit_lots (community_id);
-- reservations: the reaper's index holds only what it looks for, pending reservations by expiry, instead of an entry
-- for every reservation ever made.
DROP INDEX IF EXISTS reservations_pending;
CREATE INDEX IF NOT EXISTS reservations_pending ON reservations (expires_at) WHERE status = 'pending';
-- Migrations run in one transaction, so these builds cannot be CONCURRENTLY: on a database with many reservations,
-- ledger writes wait while the partial index is built (one scan of the table; it holds only pending rows).
