-- The ledger's reserve, finalize and release/expire on PostgreSQL: one function each, so each operation is one round
-- trip and one implicit transaction (Ledger.cs calls them in autocommit). They do what Ledger.cs does on SQLite, in
-- the same lock order (reservation, budget month, wallet, spend, lots), with conditional updates whose row counts
-- decide the outcome. A refusal undoes its own writes before returning, so nothing of it is committed; any error
-- (including an injected fault, p_fault = the point's name, NULL in production) rolls the whole statement back.
-- Time and month come from the caller (its TimeProvider). Changing a function means a new migration that replaces it.
CREATE OR REPLACE FUNCTION ledger_reserve(
    p_id TEXT, p_community TEXT, p_month TEXT, p_amount BIGINT, p_at BIGINT, p_expires BIGINT, p_fault TEXT)
RETURNS TABLE (o_status TEXT, o_owner TEXT, o_amount BIGINT, o_budget BIGINT, o_wallet BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    v_rows INT;
    v_created BOOLEAN := FALSE;
    v_budget BIGINT;
    v_wallet BIGINT;
    v_owner TEXT;
    v_amount BIGINT;
BEGIN
    INSERT INTO reservations (id, community_id, month, amount_micro, status, created_at, expires_at)
    SELECT p_id, c.id, p_month, p_amount, 'pending', p_at, p_expires FROM communities c WHERE c.id = p_community
    ON CONFLICT (id) DO NOTHING;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    IF v_rows = 0 THEN
        SELECT r.community_id, r.amount_micro INTO v_owner, v_amount FROM reservations r WHERE r.id = p_id;
        IF FOUND THEN
            RETURN QUERY SELECT 'duplicate'::TEXT, v_owner, v_amount, 0::BIGINT, 0::BIGINT;
        ELSE
            RETURN QUERY SELECT 'community_not_found'::TEXT, NULL::TEXT, p_amount, 0::BIGINT, 0::BIGINT;
        END IF;
        RETURN;
    END IF;

    IF p_fault = 'reserve.after-insert' THEN
        RAISE EXCEPTION 'injected DB error at %', p_fault;
    END IF;

    UPDATE budget_months b SET reserved_micro = b.reserved_micro + p_amount
    WHERE b.community_id = p_community AND b.month = p_month AND b.committed_micro + b.reserved_micro + p_amount <= b.limit_micro
    RETURNING b.limit_micro - b.committed_micro - b.reserved_micro INTO v_budget;
    IF NOT FOUND THEN
        -- First reserve of the month (or a refusal): make sure the month row exists, then try once more. The retry
        -- runs even when a concurrent first reserve created the row (READ COMMITTED: this statement sees it).
        INSERT INTO budget_months (community_id, month, limit_micro, committed_micro, reserved_micro)
        SELECT c.id, p_month, c.monthly_budget_cents * 10000, 0, 0 FROM communities c WHERE c.id = p_community
        ON CONFLICT (community_id, month) DO NOTHING;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_created := v_rows = 1;
        UPDATE budget_months b SET reserved_micro = b.reserved_micro + p_amount
        WHERE b.community_id = p_community AND b.month = p_month AND b.committed_micro + b.reserved_micro + p_amount <= b.limit_micro
        RETURNING b.limit_micro - b.committed_micro - b.reserved_micro INTO v_budget;

        IF v_budget IS NULL THEN
            SELECT COALESCE((SELECT b.limit_micro - b.committed_micro - b.reserved_micro FROM budget_months b
                             WHERE b.community_id = p_community AND b.month = p_month), 0),
                   COALESCE((SELECT a.credits_posted - a.debits_posted - a.debits_pending FROM ledger_accounts a
                             WHERE a.id = p_community || ':wallet'), 0)
            INTO v_budget, v_wallet;
            -- Refused: undo this call's writes, as a rollback would.
            DELETE FROM reservations r WHERE r.id = p_id;
            IF v_created THEN
                DELETE FROM budget_months b WHERE b.community_id = p_community AND b.month = p_month;
            END IF;
            RETURN QUERY SELECT 'budget_exceeded'::TEXT, NULL::TEXT, p_amount, v_budget, v_wallet;
            RETURN;
        END IF;
    END IF;

    UPDATE ledger_accounts a SET debits_pending = a.debits_pending + p_amount
    WHERE a.id = p_community || ':wallet' AND a.credits_posted - a.debits_posted - a.debits_pending >= p_amount
    RETURNING a.credits_posted - a.debits_posted - a.debits_pending INTO v_wallet;
    IF NOT FOUND THEN
        SELECT COALESCE((SELECT a.credits_posted - a.debits_posted - a.debits_pending FROM ledger_accounts a
                         WHERE a.id = p_community || ':wallet'), 0)
        INTO v_wallet;
        -- Refused: undo this call's writes, as a rollback would.
        IF v_created THEN
            DELETE FROM budget_months b WHERE b.community_id = p_community AND b.month = p_month;
        ELSE
            UPDATE budget_months b SET reserved_micro = b.reserved_micro - p_amount WHERE b.community_id = p_community AND b.month = p_month;
        END IF;
        DELETE FROM reservations r WHERE r.id = p_id;
        RETURN QUERY SELECT 'wallet_insufficient'::TEXT, NULL::TEXT, p_amount, v_budget, v_wallet;
        RETURN;
    END IF;

    IF p_fault = 'reserve.after-wallet' THEN
        RAISE EXCEPTION 'injected DB error at %', p_fault;
    END IF;

    UPDATE ledger_accounts a SET credits_pending = a.credits_pending + p_amount WHERE a.id = p_community || ':spend';
    INSERT INTO ledger_transfers (id, community_id, kind, debit_account_id, credit_account_id, amount_micro, pending_id, created_at)
    VALUES ('r:' || p_id, p_community, 'pending', p_community || ':wallet', p_community || ':spend', p_amount, NULL, p_at);
    RETURN QUERY SELECT 'reserved'::TEXT, NULL::TEXT, p_amount, v_budget, v_wallet;
END;
$$;

CREATE OR REPLACE FUNCTION ledger_finalize(
    p_id TEXT, p_actual BIGINT, p_at BIGINT, p_agent TEXT, p_pool TEXT, p_model TEXT, p_prompt BIGINT, p_completion BIGINT,
    p_trace TEXT, p_key TEXT, p_fault TEXT)
RETURNS TABLE (o_status TEXT, o_amount BIGINT, o_actual BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    v_community TEXT;
    v_month TEXT;
    v_amount BIGINT;
    v_status TEXT;
    v_actual BIGINT;
    v_transfer TEXT := 'p:' || p_id;
    v_left BIGINT;
    v_take BIGINT;
    v_lot RECORD;
BEGIN
    UPDATE reservations r SET status = 'posted', actual_micro = p_actual, resolved_at = p_at
    WHERE r.id = p_id AND r.status = 'pending' AND r.amount_micro >= p_actual
    RETURNING r.community_id, r.month, r.amount_micro INTO v_community, v_month, v_amount;
    IF NOT FOUND THEN
        SELECT r.status, r.amount_micro, r.actual_micro INTO v_status, v_amount, v_actual FROM reservations r WHERE r.id = p_id;
        IF FOUND THEN
            RETURN QUERY SELECT v_status, v_amount, v_actual;
        ELSE
            RETURN QUERY SELECT 'not_found'::TEXT, 0::BIGINT, NULL::BIGINT;
        END IF;
        RETURN;
    END IF;

    IF p_fault = 'finalize.after-claim' THEN
        RAISE EXCEPTION 'injected DB error at %', p_fault;
    END IF;

    UPDATE budget_months b SET reserved_micro = b.reserved_micro - v_amount, committed_micro = b.committed_micro + p_actual
    WHERE b.community_id = v_community AND b.month = v_month;
    UPDATE ledger_accounts a SET debits_pending = a.debits_pending - v_amount, debits_posted = a.debits_posted + p_actual
    WHERE a.id = v_community || ':wallet';
    IF p_fault = 'finalize.after-wallet' THEN
        RAISE EXCEPTION 'injected DB error at %', p_fault;
    END IF;

    UPDATE ledger_accounts a SET credits_pending = a.credits_pending - v_amount, credits_posted = a.credits_posted + p_actual
    WHERE a.id = v_community || ':spend';

    -- Debit lots earliest-expiry-first; the wallet row is already locked by this transaction.
    v_left := p_actual;
    IF v_left > 0 THEN
        FOR v_lot IN
            SELECT l.id, l.remaining_micro FROM credit_lots l WHERE l.community_id = v_community AND l.remaining_micro > 0
            ORDER BY CASE WHEN l.expires_at IS NULL THEN 1 ELSE 0 END, l.expires_at, l.created_at, l.id FOR UPDATE
        LOOP
            v_take := LEAST(v_left, v_lot.remaining_micro);
            UPDATE credit_lots l SET remaining_micro = l.remaining_micro - v_take WHERE l.id = v_lot.id AND l.remaining_micro >= v_take;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'Credit lot % changed under the wallet lock.', v_lot.id;
            END IF;
            INSERT INTO lot_entries (lot_id, transfer_id, community_id, kind, amount_micro, created_at)
            VALUES (v_lot.id, v_transfer, v_community, 'debit', v_take, p_at);
            v_left := v_left - v_take;
            EXIT WHEN v_left = 0;
        END LOOP;
        IF v_left > 0 THEN
            RAISE EXCEPTION 'The lots of community % cannot cover % micro-USD although the wallet held it.', v_community, p_actual;
        END IF;
    END IF;

    INSERT INTO ledger_transfers (id, community_id, kind, debit_account_id, credit_account_id, amount_micro, pending_id, created_at)
    VALUES (v_transfer, v_community, 'post', v_community || ':wallet', v_community || ':spend', p_actual, 'r:' || p_id, p_at);
    INSERT INTO usage_records (id, community_id, month, agent_id, pool, model, prompt_tokens, completion_tokens, cost_micro, trace_id, idempotency_key, created_at)
    VALUES (p_id, v_community, v_month, p_agent, p_pool, p_model, p_prompt, p_completion, p_actual, p_trace, p_key, p_at);
    RETURN QUERY SELECT 'finalized'::TEXT, v_amount, p_actual;
END;
$$;

-- p_status is 'voided' (release) or 'expired' (the reaper: only once the reservation is due).
CREATE OR REPLACE FUNCTION ledger_resolve(p_id TEXT, p_status TEXT, p_at BIGINT, p_fault TEXT)
RETURNS TABLE (o_status TEXT, o_amount BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    v_community TEXT;
    v_month TEXT;
    v_amount BIGINT;
    v_status TEXT;
BEGIN
    UPDATE reservations r SET status = p_status, resolved_at = p_at
    WHERE r.id = p_id AND r.status = 'pending' AND (p_status <> 'expired' OR r.expires_at <= p_at)
    RETURNING r.community_id, r.month, r.amount_micro INTO v_community, v_month, v_amount;
    IF NOT FOUND THEN
        SELECT r.status, r.amount_micro INTO v_status, v_amount FROM reservations r WHERE r.id = p_id;
        IF FOUND THEN
            RETURN QUERY SELECT v_status, v_amount;
        ELSE
            RETURN QUERY SELECT 'not_found'::TEXT, 0::BIGINT;
        END IF;
        RETURN;
    END IF;

    IF p_fault = 'release.after-claim' THEN
        RAISE EXCEPTION 'injected DB error at %', p_fault;
    END IF;

    UPDATE budget_months b SET reserved_micro = b.reserved_micro - v_amount WHERE b.community_id = v_community AND b.month = v_month;
    UPDATE ledger_accounts a SET debits_pending = a.debits_pending - v_amount WHERE a.id = v_community || ':wallet';
    UPDATE ledger_accounts a SET credits_pending = a.credits_pending - v_amount WHERE a.id = v_community || ':spend';
    INSERT INTO ledger_transfers (id, community_id, kind, debit_account_id, credit_account_id, amount_micro, pending_id, created_at)
    VALUES (CASE WHEN p_status = 'expired' THEN 'x:' ELSE 'v:' END || p_id, v_community, CASE WHEN p_status = 'expired' THEN 'expire' ELSE 'void' END,
            v_community || ':wallet', v_community || ':spend', v_amount, 'r:' || p_id, p_at);
    RETURN QUERY SELECT 'released'::TEXT, v_amount;
END;
$$;
