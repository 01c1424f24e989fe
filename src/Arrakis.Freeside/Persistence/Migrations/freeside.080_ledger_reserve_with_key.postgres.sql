-- The invoke path's admission in one round trip on PostgreSQL: claim the request's idempotency key (a new
-- in_progress row, the same INSERT IdempotencyStore makes) and reserve, in one function call and so one implicit
-- transaction, as SQLite does both in one transaction. A key that is already there reserves nothing ('key_taken':
-- the caller reads the key and decides between replay, 409 and a takeover). A refused reservation takes its claim
-- back, so a refusal leaves nothing behind. Any error rolls both back.
CREATE OR REPLACE FUNCTION ledger_reserve_with_key(
    p_scope TEXT, p_key TEXT, p_hash TEXT,
    p_id TEXT, p_community TEXT, p_month TEXT, p_amount BIGINT, p_at BIGINT, p_expires BIGINT, p_fault TEXT)
RETURNS TABLE (o_status TEXT, o_owner TEXT, o_amount BIGINT, o_budget BIGINT, o_wallet BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    v RECORD;
BEGIN
    INSERT INTO idempotency_keys (scope, idem_key, request_hash, state, created_at, updated_at)
    VALUES (p_scope, p_key, p_hash, 'in_progress', p_at, p_at)
    ON CONFLICT (scope, idem_key) DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'key_taken'::TEXT, NULL::TEXT, p_amount, 0::BIGINT, 0::BIGINT;
        RETURN;
    END IF;

    SELECT * INTO v FROM ledger_reserve(p_id, p_community, p_month, p_amount, p_at, p_expires, p_fault);
    IF v.o_status <> 'reserved' THEN
        DELETE FROM idempotency_keys k WHERE k.scope = p_scope AND k.idem_key = p_key;
    END IF;

    RETURN QUERY SELECT v.o_status, v.o_owner, v.o_amount, v.o_budget, v.o_wallet;
END;
$$;
