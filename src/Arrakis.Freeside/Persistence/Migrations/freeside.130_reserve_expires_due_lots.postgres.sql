-- A reserve no longer holds credit that has expired. The lot reaper moves an expired lot's remainder out of the wallet
-- every few seconds (or never, if it stopped), and until then a reserve could hold it and a finalize spend it. Reserve
-- now expires the community's due lots itself, inside the same call and under the same wallet lock, before it asks the
-- wallet (ledger_expire_due_lots: the steps of Ledger.ExpireLotAsync, which the SQLite path and the reaper run). When no
-- lot is due it only reads the community's lots. What expires is the expired credit that pending holds do not need:
-- the wallet's available balance less the valid lots' credit. ledger_reserve_with_key is otherwise the one of 110.
CREATE OR REPLACE FUNCTION ledger_expire_due_lots(p_community TEXT, p_at BIGINT) RETURNS VOID
LANGUAGE plpgsql AS $$
DECLARE
    v_lot TEXT;
    v_remaining BIGINT;
    v_available BIGINT;
    v_amount BIGINT;
    v_transfer TEXT;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM credit_lots l WHERE l.community_id = p_community AND l.expires_at IS NOT NULL
                   AND l.expires_at <= p_at AND l.remaining_micro > 0) THEN
        RETURN;
    END IF;

    UPDATE ledger_accounts a SET debits_posted = a.debits_posted WHERE a.id = p_community || ':wallet'; -- the wallet lock
    FOR v_lot IN SELECT l.id FROM credit_lots l WHERE l.community_id = p_community AND l.expires_at IS NOT NULL
                 AND l.expires_at <= p_at AND l.remaining_micro > 0 ORDER BY l.id LOOP
        SELECT l.remaining_micro INTO v_remaining FROM credit_lots l WHERE l.id = v_lot FOR UPDATE;
        SELECT a.credits_posted - a.debits_posted - a.debits_pending INTO v_available FROM ledger_accounts a WHERE a.id = p_community || ':wallet';
        -- Never what pending holds need of the expired credit (holds draw on the earliest-expiring lots first).
        SELECT v_available - COALESCE(SUM(l.remaining_micro), 0) INTO v_available FROM credit_lots l
        WHERE l.community_id = p_community AND (l.expires_at IS NULL OR l.expires_at > p_at);
        v_amount := LEAST(v_remaining, v_available);
        CONTINUE WHEN v_amount <= 0;
        v_transfer := 'lx:' || v_lot || ':' || v_remaining;
        UPDATE ledger_accounts a SET debits_posted = a.debits_posted + v_amount WHERE a.id = p_community || ':wallet';
        UPDATE ledger_accounts a SET credits_posted = a.credits_posted + v_amount WHERE a.id = p_community || ':expired';
        UPDATE credit_lots l SET remaining_micro = l.remaining_micro - v_amount WHERE l.id = v_lot;
        INSERT INTO lot_entries (lot_id, transfer_id, community_id, kind, amount_micro, created_at)
        VALUES (v_lot, v_transfer, p_community, 'expiry', v_amount, p_at);
        INSERT INTO ledger_transfers (id, community_id, kind, debit_account_id, credit_account_id, amount_micro, pending_id, created_at)
        VALUES (v_transfer, p_community, 'lot_expiry', p_community || ':wallet', p_community || ':expired', v_amount, NULL, p_at);
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION ledger_reserve_with_key(
    p_scope TEXT, p_key TEXT, p_hash TEXT,
    p_id TEXT, p_community TEXT, p_month TEXT, p_amount BIGINT, p_at BIGINT, p_expires BIGINT, p_fault TEXT,
    OUT o_status TEXT, OUT o_owner TEXT, OUT o_amount BIGINT, OUT o_budget BIGINT, OUT o_wallet BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    v_rows INT;
    v_created BOOLEAN := FALSE;
BEGIN
    o_amount := p_amount;
    o_budget := 0;
    o_wallet := 0;
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency_keys (scope, idem_key, request_hash, state, owner, created_at, updated_at)
        VALUES (p_scope, p_key, p_hash, 'in_progress', p_id, p_at, p_at)
        ON CONFLICT (scope, idem_key) DO NOTHING;
        IF NOT FOUND THEN
            o_status := 'key_taken';
            RETURN;
        END IF;
    END IF;

    <<reserve>>
    BEGIN
        INSERT INTO reservations (id, community_id, month, amount_micro, status, created_at, expires_at)
        SELECT p_id, c.id, p_month, p_amount, 'pending', p_at, p_expires FROM communities c WHERE c.id = p_community
        ON CONFLICT (id) DO NOTHING;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        IF v_rows = 0 THEN
            SELECT r.community_id, r.amount_micro INTO o_owner, o_amount FROM reservations r WHERE r.id = p_id;
            IF FOUND THEN
                o_status := 'duplicate';
            ELSE
                o_status := 'community_not_found';
                o_amount := p_amount;
            END IF;
            EXIT reserve;
        END IF;

        IF p_fault = 'reserve.after-insert' THEN
            RAISE EXCEPTION 'injected DB error at %', p_fault;
        END IF;

        UPDATE budget_months b SET reserved_micro = b.reserved_micro + p_amount
        WHERE b.community_id = p_community AND b.month = p_month AND b.committed_micro + b.reserved_micro + p_amount <= b.limit_micro
        RETURNING b.limit_micro - b.committed_micro - b.reserved_micro INTO o_budget;
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
            RETURNING b.limit_micro - b.committed_micro - b.reserved_micro INTO o_budget;
            IF NOT FOUND THEN
                SELECT COALESCE((SELECT b.limit_micro - b.committed_micro - b.reserved_micro FROM budget_months b
                                 WHERE b.community_id = p_community AND b.month = p_month), 0),
                       COALESCE((SELECT a.credits_posted - a.debits_posted - a.debits_pending FROM ledger_accounts a
                                 WHERE a.id = p_community || ':wallet'), 0)
                INTO o_budget, o_wallet;
                -- Refused: undo this call's writes, as a rollback would.
                DELETE FROM reservations r WHERE r.id = p_id;
                IF v_created THEN
                    DELETE FROM budget_months b WHERE b.community_id = p_community AND b.month = p_month;
                END IF;
                o_status := 'budget_exceeded';
                EXIT reserve;
            END IF;
        END IF;

        PERFORM ledger_expire_due_lots(p_community, p_at); -- credit that expired is not held
        UPDATE ledger_accounts a SET debits_pending = a.debits_pending + p_amount
        WHERE a.id = p_community || ':wallet' AND a.credits_posted - a.debits_posted - a.debits_pending >= p_amount
        RETURNING a.credits_posted - a.debits_posted - a.debits_pending INTO o_wallet;
        IF NOT FOUND THEN
            o_wallet := COALESCE((SELECT a.credits_posted - a.debits_posted - a.debits_pending FROM ledger_accounts a
                                  WHERE a.id = p_community || ':wallet'), 0);
            -- Refused: undo this call's writes, as a rollback would.
            IF v_created THEN
                DELETE FROM budget_months b WHERE b.community_id = p_community AND b.month = p_month;
            ELSE
                UPDATE budget_months b SET reserved_micro = b.reserved_micro - p_amount WHERE b.community_id = p_community AND b.month = p_month;
            END IF;
            DELETE FROM reservations r WHERE r.id = p_id;
            o_status := 'wallet_insufficient';
            EXIT reserve;
        END IF;

        IF p_fault = 'reserve.after-wallet' THEN
            RAISE EXCEPTION 'injected DB error at %', p_fault;
        END IF;

        UPDATE ledger_accounts a SET credits_pending = a.credits_pending + p_amount WHERE a.id = p_community || ':spend';
        INSERT INTO ledger_transfers (id, community_id, kind, debit_account_id, credit_account_id, amount_micro, pending_id, created_at)
        VALUES ('r:' || p_id, p_community, 'pending', p_community || ':wallet', p_community || ':spend', p_amount, NULL, p_at);
        o_status := 'reserved';
    END reserve;

    IF o_status <> 'reserved' AND p_key IS NOT NULL THEN
        DELETE FROM idempotency_keys k WHERE k.scope = p_scope AND k.idem_key = p_key;
    END IF;
END;
$$;
