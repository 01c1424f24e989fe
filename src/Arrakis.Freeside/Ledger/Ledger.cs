using System.Data.Common;
using System.Diagnostics;
using Arrakis.Shared.Storage;
using Dapper;

namespace Arrakis.Freeside.Ledger;

/// <summary>
/// The credit ledger (DESIGN §3): each operation is one database transaction made of conditional updates whose row
/// counts decide the outcome, so it is atomic across threads, processes and replicas on SQLite and PostgreSQL.
/// On PostgreSQL, reserve, finalize and release/expire are one call each to a PL/pgSQL function
/// (<c>freeside.070_ledger_functions.postgres.sql</c>) that does the same steps in one round trip; SQLite is in-process,
/// so it runs them here. Lock order everywhere: reservation, budget month, wallet, spend, lots, issuance/expired.
/// </summary>
public sealed class Ledger(Database db, TimeProvider time, LedgerOptions options, LedgerMetrics metrics)
{
    /// <summary>
    /// The ledger's activities (<c>ledger.reserve</c>, <c>ledger.finalize</c>), each spanning the whole operation with its
    /// queueing and tagged <c>ledger.status</c> with the outcome, for any tracer that listens (the invoke bench's breakdown
    /// does). Without a listener none is created.
    /// </summary>
    public const string ActivitySourceName = "Arrakis.Freeside.Ledger";

    static readonly ActivitySource Activities = new(ActivitySourceName);

    // SQLite writers already queue one at a time at the database's write gate; PostgreSQL ones queue here.
    readonly SemaphoreSlim? _postgresWrites = db.IsPostgres ? Slots(WriteLimit(options)) : null;

    /// <summary>The PostgreSQL bound in effect (<see cref="LedgerOptions.MaxConcurrentWrites"/>, 0 = 4 per core).</summary>
    public static int WriteLimit(LedgerOptions options) =>
        options.MaxConcurrentWrites > 0 ? options.MaxConcurrentWrites : 4 * Environment.ProcessorCount;

    static SemaphoreSlim Slots(int count) => new(count, count);

    /// <summary>
    /// Test hook: the named point (e.g. <c>reserve.after-wallet</c>) at which the next operations fail mid-transaction,
    /// inside the database transaction (on PostgreSQL the function raises there), so nothing of them commits.
    /// </summary>
    internal string? FaultPoint { get; set; }

    public TimeProvider Time => time;

    public Task<ReserveResult> ReserveAsync(string communityId, string reservationId, long amountMicro, TimeSpan? ttl = null, CancellationToken ct = default) =>
        ReserveAsync(communityId, reservationId, amountMicro, ttl, null, ct);

    /// <summary>
    /// Reserves <paramref name="amountMicro"/> against the community's monthly budget and wallet, or refuses. With
    /// <paramref name="key"/>, the request's idempotency key is claimed in the same transaction (SQLite) or the same
    /// function call (PostgreSQL): a key already there reserves nothing (<see cref="ReserveStatus.KeyTaken"/>), and a
    /// refusal takes the claim back, so the claim commits exactly when the reservation does.
    /// </summary>
    public Task<ReserveResult> ReserveAsync(string communityId, string reservationId, long amountMicro, TimeSpan? ttl, LedgerKeyClaim? key, CancellationToken ct = default) =>
        ReserveAsync(communityId, reservationId, amountMicro, ttl, key, null, ct);

    /// <summary>
    /// As above; when the caller stopped waiting (the request-path timeout, or <paramref name="ct"/>) before the reserve
    /// ended, <paramref name="abandoned"/> gets it once it has: it may have reserved (and claimed the key) after all
    /// (<see cref="Database.WithinRequestTimeoutAsync{T}(Func{CancellationToken, Task{T}}, Action{Task{T}}?, CancellationToken)"/>).
    /// </summary>
    public async Task<ReserveResult> ReserveAsync(string communityId, string reservationId, long amountMicro, TimeSpan? ttl, LedgerKeyClaim? key,
        Action<Task<ReserveResult>>? abandoned, CancellationToken ct = default)
    {
        using var activity = Activities.StartActivity("ledger.reserve");
        var result = await db.WithinRequestTimeoutAsync(t => ReserveCoreAsync(communityId, reservationId, amountMicro, ttl, key, t), abandoned, ct);
        activity?.SetTag("ledger.status", result.Status.ToString());
        return result;
    }

    async Task<ReserveResult> ReserveCoreAsync(string communityId, string reservationId, long amountMicro, TimeSpan? ttl, LedgerKeyClaim? key, CancellationToken ct)
    {
        if (!LedgerIds.IsValid(communityId))
        {
            return new(ReserveStatus.Invalid, reservationId, amountMicro, 0, 0, LedgerIds.Rule("communityId"), "communityId");
        }

        if (!LedgerIds.IsValid(reservationId))
        {
            return new(ReserveStatus.Invalid, reservationId, amountMicro, 0, 0, LedgerIds.Rule("reservationId"), "reservationId");
        }

        if (!LedgerIds.IsValidAmount(amountMicro))
        {
            return new(ReserveStatus.Invalid, reservationId, amountMicro, 0, 0, $"amountMicro must be between 1 and {LedgerIds.MaxAmountMicro}.", "amountMicro");
        }

        var life = ttl ?? options.ReservationTtl;
        if (life <= TimeSpan.Zero)
        {
            return new(ReserveStatus.Invalid, reservationId, amountMicro, 0, 0, "ttl must be positive.");
        }

        if (db.IsPostgres)
        {
            var now = time.GetUtcNow();
            var at = now.ToUnixTimeMilliseconds();
            var args = new
            {
                scope = key?.Scope, key = key?.Key, hash = key?.RequestHash,
                id = reservationId, community = communityId, month = LedgerIds.Month(now), amount = amountMicro, at, expires = at + (long)life.TotalMilliseconds, fault = FaultPoint,
            };
            var row = await CallAsync(c => c.QuerySingleAsync<ReserveRow>(key is null
                ? "SELECT o_status AS Status, o_owner AS Owner, o_amount AS Amount, o_budget AS Budget, o_wallet AS Wallet FROM ledger_reserve(@id, @community, @month, @amount, @at, @expires, @fault)"
                : "SELECT o_status AS Status, o_owner AS Owner, o_amount AS Amount, o_budget AS Budget, o_wallet AS Wallet FROM ledger_reserve_with_key(@scope, @key, @hash, @id, @community, @month, @amount, @at, @expires, @fault)",
                args), ct);
            if (row.Status == "budget_exceeded")
            {
                // The function reads the wallet before it expires any lot (the budget refused first): report the credit a
                // reserve could hold, as a wallet refusal and the budget view do.
                await using var read = await db.OpenAsync(ct);
                row = row with { Wallet = await HoldableCreditAsync(read, null, communityId, at) };
            }

            return row.Status switch
            {
                "key_taken" => KeyTaken(reservationId, amountMicro),
                "reserved" => new ReserveResult(ReserveStatus.Reserved, reservationId, amountMicro, row.Budget, row.Wallet),
                "duplicate" => new ReserveResult(ReserveStatus.Duplicate, reservationId, row.Amount, 0, 0, row.Owner == communityId ? null : "The reservation id belongs to another community."),
                "community_not_found" => new ReserveResult(ReserveStatus.CommunityNotFound, reservationId, amountMicro, 0, 0, $"Community '{communityId}' does not exist."),
                "budget_exceeded" => new ReserveResult(ReserveStatus.BudgetExceeded, reservationId, amountMicro, row.Budget, row.Wallet,
                    $"The monthly budget has {row.Budget} micro-USD left; this call needs up to {amountMicro}."),
                // The function's budget figure is read after this reserve's own (undone) addition; report it before, as SQLite does.
                "wallet_insufficient" => new ReserveResult(ReserveStatus.WalletInsufficient, reservationId, amountMicro, row.Budget + amountMicro, row.Wallet,
                    $"The credit wallet has {row.Wallet} micro-USD available; this call needs up to {amountMicro}."),
                var other => throw new InvalidOperationException($"ledger_reserve returned an unknown status '{other}'."),
            };
        }

        return await WriteAsync(async (c, tx) =>
        {
            var now = time.GetUtcNow();
            var month = LedgerIds.Month(now);
            var at = now.ToUnixTimeMilliseconds();
            if (key is not null && await c.ExecAsync(Idempotency.IdempotencyStore.ClaimSql, new { scope = key.Scope, key = key.Key, requestHash = key.RequestHash, owner = reservationId, now = at }, tx) == 0)
            {
                return (KeyTaken(reservationId, amountMicro), false);
            }

            var inserted = await c.ExecAsync(
                """
                INSERT INTO reservations (id, community_id, month, amount_micro, status, created_at, expires_at)
                SELECT @id, id, @month, @amount, 'pending', @at, @expires FROM communities WHERE id = @community
                ON CONFLICT (id) DO NOTHING
                """,
                new { id = reservationId, month, amount = amountMicro, at, expires = at + (long)life.TotalMilliseconds, community = communityId }, tx);
            if (inserted == 0)
            {
                var existing = await c.RowAsync<OwnerRow>(
                    "SELECT community_id AS CommunityId, amount_micro AS Amount FROM reservations WHERE id = @id", new { id = reservationId }, tx);
                return existing is { } e
                    ? (new ReserveResult(ReserveStatus.Duplicate, reservationId, e.Amount, 0, 0, e.CommunityId == communityId ? null : "The reservation id belongs to another community."), false)
                    : (new ReserveResult(ReserveStatus.CommunityNotFound, reservationId, amountMicro, 0, 0, $"Community '{communityId}' does not exist."), false);
            }

            Fault("reserve.after-insert");
            if (!await AddReservedAsync(c, tx, communityId, month, amountMicro))
            {
                var budget = await BudgetRemainingAsync(c, tx, communityId, month);
                return (new ReserveResult(ReserveStatus.BudgetExceeded, reservationId, amountMicro, budget, await HoldableCreditAsync(c, tx, communityId, at),
                    $"The monthly budget has {budget} micro-USD left; this call needs up to {amountMicro}."), false);
            }

            // The budget row is this transaction's (and SQLite has one writer): expire what is due before the wallet is asked.
            await ExpireDueLotsAsync(c, tx, communityId, at);
            var held = await c.ExecAsync(
                """
                UPDATE ledger_accounts SET debits_pending = debits_pending + @amount
                WHERE id = @id AND credits_posted - debits_posted - debits_pending >= @amount
                """,
                new { id = LedgerIds.Wallet(communityId), amount = amountMicro }, tx);
            if (held == 0)
            {
                // The budget already holds this refused amount in this transaction (rolled back below): report what was left before it.
                var wallet = await WalletAvailableAsync(c, tx, communityId);
                return (new ReserveResult(ReserveStatus.WalletInsufficient, reservationId, amountMicro, await BudgetRemainingAsync(c, tx, communityId, month) + amountMicro, wallet,
                    $"The credit wallet has {wallet} micro-USD available; this call needs up to {amountMicro}."), false);
            }

            Fault("reserve.after-wallet");
            await c.ExecAsync("UPDATE ledger_accounts SET credits_pending = credits_pending + @amount WHERE id = @id",
                new { id = LedgerIds.Spend(communityId), amount = amountMicro }, tx);
            await InsertTransferAsync(c, tx, "r:" + reservationId, communityId, "pending", LedgerIds.Wallet(communityId), LedgerIds.Spend(communityId), amountMicro, null, at);
            return (new ReserveResult(ReserveStatus.Reserved, reservationId, amountMicro,
                await BudgetRemainingAsync(c, tx, communityId, month), await WalletAvailableAsync(c, tx, communityId)), true);
        }, ct);
    }

    public Task<FinalizeResult> FinalizeAsync(string reservationId, long actualMicro, UsageRecord usage, CancellationToken ct = default) =>
        FinalizeAsync(reservationId, actualMicro, usage, null, ct);

    /// <summary>
    /// Posts <paramref name="actualMicro"/> of the reservation and releases the rest. <paramref name="alongside"/>, when
    /// given, is another store's write (e.g. the idempotent response) committed in the same transaction, whatever the
    /// posting's outcome: on SQLite inside the posting's transaction, on PostgreSQL as a second statement of the same
    /// round trip (one implicit transaction). It must not touch the ledger's tables.
    /// </summary>
    public async Task<FinalizeResult> FinalizeAsync(string reservationId, long actualMicro, UsageRecord usage, LedgerSideWrite? alongside, CancellationToken ct = default)
    {
        using var activity = Activities.StartActivity("ledger.finalize");
        var result = await db.WithinRequestTimeoutAsync(t => FinalizeCoreAsync(reservationId, actualMicro, usage, alongside, t), ct);
        activity?.SetTag("ledger.status", result.Status.ToString());
        return result;
    }

    async Task<FinalizeResult> FinalizeCoreAsync(string reservationId, long actualMicro, UsageRecord usage, LedgerSideWrite? alongside, CancellationToken ct)
    {
        if (!LedgerIds.IsValid(reservationId))
        {
            return new(FinalizeStatus.Invalid, reservationId, 0, actualMicro, 0, LedgerIds.Rule("reservationId"));
        }

        if (actualMicro < 0 || actualMicro > LedgerIds.MaxAmountMicro)
        {
            return new(FinalizeStatus.Invalid, reservationId, 0, actualMicro, 0, $"actualMicro must be between 0 and {LedgerIds.MaxAmountMicro}.");
        }

        var result = db.IsPostgres ? await FinalizeInDatabaseAsync(reservationId, actualMicro, usage, alongside, ct) : await WriteAsync(async (c, tx) =>
        {
            if (alongside is not null)
            {
                await c.ExecAsync(alongside.Sql, alongside.Parameters, tx);
            }

            var at = time.GetUtcNow().ToUnixTimeMilliseconds();
            var claimed = await c.RowAsync<ClaimRow>(
                """
                UPDATE reservations SET status = 'posted', actual_micro = @actual, resolved_at = @at
                WHERE id = @id AND status = 'pending' AND amount_micro >= @actual
                RETURNING community_id AS CommunityId, month AS Month, amount_micro AS Amount
                """,
                new { id = reservationId, actual = actualMicro, at }, tx);
            if (claimed is not { } r)
            {
                var existing = await c.RowAsync<StatusRow>(
                    "SELECT status AS Status, amount_micro AS Amount, actual_micro AS Actual FROM reservations WHERE id = @id", new { id = reservationId }, tx);
                return (Unclaimed(reservationId, actualMicro, existing), alongside is not null); // nothing of the ledger changed
            }

            Fault("finalize.after-claim");
            await c.ExecAsync(
                """
                UPDATE budget_months SET reserved_micro = reserved_micro - @amount, committed_micro = committed_micro + @actual
                WHERE community_id = @community AND month = @month
                """,
                new { community = r.CommunityId, month = r.Month, amount = r.Amount, actual = actualMicro }, tx);
            await c.ExecAsync(
                "UPDATE ledger_accounts SET debits_pending = debits_pending - @amount, debits_posted = debits_posted + @actual WHERE id = @id",
                new { id = LedgerIds.Wallet(r.CommunityId), amount = r.Amount, actual = actualMicro }, tx);
            Fault("finalize.after-wallet");
            await c.ExecAsync(
                "UPDATE ledger_accounts SET credits_pending = credits_pending - @amount, credits_posted = credits_posted + @actual WHERE id = @id",
                new { id = LedgerIds.Spend(r.CommunityId), amount = r.Amount, actual = actualMicro }, tx);
            var transferId = "p:" + reservationId;
            await DebitLotsAsync(c, tx, r.CommunityId, transferId, "debit", actualMicro, at);
            await InsertTransferAsync(c, tx, transferId, r.CommunityId, "post", LedgerIds.Wallet(r.CommunityId), LedgerIds.Spend(r.CommunityId), actualMicro, "r:" + reservationId, at);
            await c.ExecAsync(
                """
                INSERT INTO usage_records (id, community_id, month, agent_id, pool, model, prompt_tokens, completion_tokens, cost_micro, trace_id, idempotency_key, created_at)
                VALUES (@id, @community, @month, @agent, @pool, @model, @prompt, @completion, @cost, @trace, @key, @at)
                """,
                new
                {
                    id = reservationId, community = r.CommunityId, month = r.Month, agent = usage.AgentId, pool = usage.Pool, model = usage.Model,
                    prompt = usage.PromptTokens, completion = usage.CompletionTokens, cost = actualMicro, trace = usage.TraceId, key = usage.IdempotencyKey, at,
                }, tx);
            return (new FinalizeResult(FinalizeStatus.Finalized, reservationId, r.Amount, actualMicro, r.Amount - actualMicro), true);
        }, ct);
        if (result.Status == FinalizeStatus.Finalized)
        {
            metrics.Spent(result.ActualMicro);
        }

        return result;
    }

    /// <summary>
    /// Pushes a pending reservation's expiry out to now + <paramref name="ttl"/> (never earlier than it was), so a call that
    /// is still running keeps its hold past the TTL. Returns false when the reservation is no longer pending (or unknown).
    /// The reaper's expiry re-checks the expiry time in its own transaction, so a renewal that wins the race keeps the hold.
    /// </summary>
    public async Task<bool> RenewAsync(string reservationId, TimeSpan? ttl = null, CancellationToken ct = default)
    {
        var life = ttl ?? options.ReservationTtl;
        if (!LedgerIds.IsValid(reservationId) || life <= TimeSpan.Zero)
        {
            return false;
        }

        var until = time.GetUtcNow().ToUnixTimeMilliseconds() + (long)life.TotalMilliseconds;
        var renewed = await db.WithinRequestTimeoutAsync(t => CallAsync(c => c.ExecAsync(
            """
            UPDATE reservations SET expires_at = CASE WHEN expires_at < @until THEN @until ELSE expires_at END
            WHERE id = @id AND status = 'pending'
            """,
            new { id = reservationId, until }), t), ct);
        return renewed > 0;
    }

    public Task<ReleaseResult> ReleaseAsync(string reservationId, CancellationToken ct = default) =>
        LedgerIds.IsValid(reservationId)
            ? db.WithinRequestTimeoutAsync(t => ResolveWithoutChargeAsync(reservationId, "voided", t), ct)
            : Task.FromResult(new ReleaseResult(ReleaseStatus.Invalid, reservationId, 0, LedgerIds.Rule("reservationId")));

    /// <summary>Expires every pending reservation whose TTL has passed; returns how many this call expired.</summary>
    public async Task<int> ExpireDueAsync(int batch = 200, CancellationToken ct = default)
    {
        var expired = 0;
        while (true)
        {
            List<string> due;
            await using (var c = await db.OpenAsync(ct))
            {
                due = (await c.QueryAsync<string>(
                    "SELECT id FROM reservations WHERE status = 'pending' AND expires_at <= @now ORDER BY expires_at LIMIT @batch",
                    new { now = time.GetUtcNow().ToUnixTimeMilliseconds(), batch })).ToList();
            }

            foreach (var id in due)
            {
                if ((await ResolveWithoutChargeAsync(id, "expired", ct)).Status == ReleaseStatus.Released)
                {
                    expired++;
                }
            }

            if (due.Count < batch)
            {
                return expired;
            }
        }
    }

    public async Task<GrantResult> GrantAsync(string communityId, string lotId, long amountMicro, string source, DateTimeOffset? expiresAt = null, CancellationToken ct = default)
    {
        if (LedgerIds.FirstInvalid(("communityId", communityId), ("lotId", lotId)) is { } badId)
        {
            return new(GrantStatus.Invalid, lotId, amountMicro, LedgerIds.Rule(badId), badId);
        }

        if (!LedgerIds.IsValidAmount(amountMicro))
        {
            return new(GrantStatus.Invalid, lotId, amountMicro, $"amountMicro must be between 1 and {LedgerIds.MaxAmountMicro}.", "amountMicro");
        }

        if (!CreditSources.All.Contains(source))
        {
            return new(GrantStatus.Invalid, lotId, amountMicro, "source must be one of " + string.Join(", ", CreditSources.All.Order()) + ".", "source");
        }

        var result = await WriteAsync(async (c, tx) =>
        {
            var at = time.GetUtcNow().ToUnixTimeMilliseconds();
            var credited = await c.ExecAsync("UPDATE ledger_accounts SET credits_posted = credits_posted + @amount WHERE id = @id",
                new { id = LedgerIds.Wallet(communityId), amount = amountMicro }, tx);
            if (credited == 0)
            {
                return (new GrantResult(GrantStatus.CommunityNotFound, lotId, amountMicro, $"Community '{communityId}' does not exist."), false);
            }

            var inserted = await c.ExecAsync(
                """
                INSERT INTO credit_lots (id, community_id, source, amount_micro, remaining_micro, expires_at, created_at)
                VALUES (@id, @community, @source, @amount, @amount, @expires, @at) ON CONFLICT (id) DO NOTHING
                """,
                new { id = lotId, community = communityId, source, amount = amountMicro, expires = expiresAt?.ToUnixTimeMilliseconds(), at }, tx);
            if (inserted == 0)
            {
                var existing = await c.QuerySingleAsync<LotRow>(
                    "SELECT community_id AS CommunityId, amount_micro AS Amount, source AS Source FROM credit_lots WHERE id = @id", new { id = lotId }, tx);
                return existing.CommunityId == communityId && existing.Amount == amountMicro && existing.Source == source
                    ? (new GrantResult(GrantStatus.Duplicate, lotId, amountMicro), false)
                    : (new GrantResult(GrantStatus.Conflict, lotId, amountMicro, "The lot id already exists with a different community, amount or source."), false);
            }

            Fault("grant.after-lot");
            await c.ExecAsync("UPDATE ledger_accounts SET debits_posted = debits_posted + @amount WHERE id = @id",
                new { id = LedgerIds.Issuance(communityId), amount = amountMicro }, tx);
            var transferId = "g:" + lotId;
            await c.ExecAsync(
                "INSERT INTO lot_entries (lot_id, transfer_id, community_id, kind, amount_micro, created_at) VALUES (@lot, @transfer, @community, 'credit', @amount, @at)",
                new { lot = lotId, transfer = transferId, community = communityId, amount = amountMicro, at }, tx);
            await InsertTransferAsync(c, tx, transferId, communityId, "grant", LedgerIds.Issuance(communityId), LedgerIds.Wallet(communityId), amountMicro, null, at);
            return (new GrantResult(GrantStatus.Granted, lotId, amountMicro), true);
        }, ct);
        if (result.Status == GrantStatus.Granted)
        {
            metrics.Minted(amountMicro, source);
        }

        return result;
    }

    /// <summary>
    /// Moves what is left of expired lots out of the wallet (never below what pending holds need). Walks every due lot
    /// in pages of <paramref name="page"/>, by id: a lot that pending holds keep alive stays due, and with one unordered
    /// page a page full of such lots came back on every pass, so the lots behind it (other communities') never expired.
    /// </summary>
    public async Task<int> ExpireLotsAsync(int page = 500, CancellationToken ct = default)
    {
        var count = 0;
        var after = "";
        var now = time.GetUtcNow().ToUnixTimeMilliseconds();
        while (true)
        {
            List<LotOwner> due;
            await using (var c = await db.OpenAsync(ct))
            {
                due = (await c.QueryAsync<LotOwner>(
                    "SELECT id AS Id, community_id AS CommunityId FROM credit_lots WHERE expires_at IS NOT NULL AND expires_at <= @now AND remaining_micro > 0 AND id > @after ORDER BY id LIMIT @page",
                    new { now, after, page })).ToList();
            }

            count += await ExpireLotPageAsync(due, ct);
            if (due.Count < page)
            {
                return count;
            }

            after = due[^1].Id;
        }
    }

    async Task<int> ExpireLotPageAsync(List<LotOwner> due, CancellationToken ct)
    {
        var count = 0;
        foreach (var (lotId, communityId) in due)
        {
            count += await WriteAsync(async (c, tx) =>
            {
                await c.ExecAsync("UPDATE ledger_accounts SET debits_posted = debits_posted WHERE id = @id", new { id = LedgerIds.Wallet(communityId) }, tx); // takes the wallet lock
                var expired = await ExpireLotAsync(c, tx, lotId, communityId, time.GetUtcNow().ToUnixTimeMilliseconds());
                return (expired ? 1 : 0, expired);
            }, ct);
        }

        return count;
    }

    /// <summary>
    /// Moves what is left of one expired lot out of the wallet, but never what pending holds need of the expired credit;
    /// the wallet row is already locked by this transaction. False when nothing could move. Holds draw on lots
    /// earliest-expiry-first, so expired credit pays them before any valid lot: what may expire is the wallet's available
    /// balance less the valid lots' credit. (Capping at the available balance alone let a hold "use" a valid lot's
    /// credit while the expired lot's was burned: the community lost the valid credit.)
    /// </summary>
    static async Task<bool> ExpireLotAsync(DbConnection c, DbTransaction tx, string lotId, string communityId, long at)
    {
        var wallet = LedgerIds.Wallet(communityId);
        var remaining = await c.RowAsync<long>("SELECT remaining_micro FROM credit_lots WHERE id = @id", new { id = lotId }, tx);
        var valid = await c.RowAsync<long?>(
            "SELECT CAST(SUM(remaining_micro) AS BIGINT) FROM credit_lots WHERE community_id = @community AND (expires_at IS NULL OR expires_at > @at)",
            new { community = communityId, at }, tx) ?? 0;
        var amount = Math.Min(remaining, await WalletAvailableAsync(c, tx, communityId) - valid);
        if (amount <= 0)
        {
            return false;
        }

        var transferId = $"lx:{lotId}:{remaining}";
        await c.ExecAsync("UPDATE ledger_accounts SET debits_posted = debits_posted + @amount WHERE id = @id", new { id = wallet, amount }, tx);
        await c.ExecAsync("UPDATE ledger_accounts SET credits_posted = credits_posted + @amount WHERE id = @id", new { id = LedgerIds.Expired(communityId), amount }, tx);
        await c.ExecAsync("UPDATE credit_lots SET remaining_micro = remaining_micro - @amount WHERE id = @id", new { id = lotId, amount }, tx);
        await c.ExecAsync(
            "INSERT INTO lot_entries (lot_id, transfer_id, community_id, kind, amount_micro, created_at) VALUES (@lot, @transfer, @community, 'expiry', @amount, @at)",
            new { lot = lotId, transfer = transferId, community = communityId, amount, at }, tx);
        await InsertTransferAsync(c, tx, transferId, communityId, "lot_expiry", wallet, LedgerIds.Expired(communityId), amount, null, at);
        return true;
    }

    /// <summary>
    /// Expires the community's lots that are due, inside a reserve that already locked the wallet row: a reserve must not
    /// hold credit that expired and that the reaper (every few seconds, or never if it stopped) has not moved out yet.
    /// </summary>
    static async Task ExpireDueLotsAsync(DbConnection c, DbTransaction tx, string communityId, long at)
    {
        var due = await c.RowsAsync<LotBalance>(
            "SELECT id AS Id, remaining_micro AS Remaining FROM credit_lots WHERE community_id = @community AND expires_at IS NOT NULL AND expires_at <= @at AND remaining_micro > 0 ORDER BY id",
            new { community = communityId, at }, tx);
        foreach (var lot in due)
        {
            await ExpireLotAsync(c, tx, lot.Id, communityId, at);
        }
    }

    /// <summary>Current state of a reservation, or null.</summary>
    public async Task<ReservationState?> FindReservationAsync(string reservationId, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return await c.RowAsync<ReservationState>(
            "SELECT id AS Id, community_id AS CommunityId, status AS Status, amount_micro AS AmountMicro, actual_micro AS ActualMicro FROM reservations WHERE id = @id",
            new { id = reservationId });
    }

    sealed record OwnerRow(string CommunityId, long Amount);

    sealed record ClaimRow(string CommunityId, string Month, long Amount);

    sealed record StatusRow(string Status, long Amount, long? Actual);

    sealed record ReserveRow(string Status, string? Owner, long Amount, long Budget, long Wallet);

    sealed record LotRow(string CommunityId, long Amount, string Source);

    sealed record LotBalance(string Id, long Remaining);

    sealed record LotOwner(string Id, string CommunityId);

    async Task<ReleaseResult> ResolveWithoutChargeAsync(string reservationId, string status, CancellationToken ct)
    {
        if (db.IsPostgres)
        {
            var row = await CallAsync(c => c.QuerySingleAsync<StatusRow>(
                "SELECT o_status AS Status, o_amount AS Amount, NULL::BIGINT AS Actual FROM ledger_resolve(@id, @status, @at, @fault)",
                new { id = reservationId, status, at = time.GetUtcNow().ToUnixTimeMilliseconds(), fault = FaultPoint }), ct);
            return row.Status == "released" ? new ReleaseResult(ReleaseStatus.Released, reservationId, row.Amount) : Unreleased(reservationId, row);
        }

        return await WriteAsync(async (c, tx) =>
        {
            var at = time.GetUtcNow().ToUnixTimeMilliseconds();
            var claimed = await c.RowAsync<ClaimRow>(
                $"""
                UPDATE reservations SET status = '{status}', resolved_at = @at
                WHERE id = @id AND status = 'pending' {(status == "expired" ? "AND expires_at <= @at" : "")}
                RETURNING community_id AS CommunityId, month AS Month, amount_micro AS Amount
                """,
                new { id = reservationId, at }, tx);
            if (claimed is not { } r)
            {
                var existing = await c.RowAsync<StatusRow>(
                    "SELECT status AS Status, amount_micro AS Amount, actual_micro AS Actual FROM reservations WHERE id = @id", new { id = reservationId }, tx);
                return (Unreleased(reservationId, existing), false);
            }

            Fault("release.after-claim");
            await c.ExecAsync("UPDATE budget_months SET reserved_micro = reserved_micro - @amount WHERE community_id = @community AND month = @month",
                new { community = r.CommunityId, month = r.Month, amount = r.Amount }, tx);
            await c.ExecAsync("UPDATE ledger_accounts SET debits_pending = debits_pending - @amount WHERE id = @id",
                new { id = LedgerIds.Wallet(r.CommunityId), amount = r.Amount }, tx);
            await c.ExecAsync("UPDATE ledger_accounts SET credits_pending = credits_pending - @amount WHERE id = @id",
                new { id = LedgerIds.Spend(r.CommunityId), amount = r.Amount }, tx);
            await InsertTransferAsync(c, tx, (status == "expired" ? "x:" : "v:") + reservationId, r.CommunityId, status == "expired" ? "expire" : "void",
                LedgerIds.Wallet(r.CommunityId), LedgerIds.Spend(r.CommunityId), r.Amount, "r:" + reservationId, at);
            return (new ReleaseResult(ReleaseStatus.Released, reservationId, r.Amount), true);
        }, ct);
    }

    static ReleaseResult Unreleased(string reservationId, StatusRow? existing) =>
        existing switch
        {
            null or { Status: "not_found" } => new ReleaseResult(ReleaseStatus.NotFound, reservationId, 0, $"Reservation '{reservationId}' does not exist."),
            { Status: "voided" } e => new ReleaseResult(ReleaseStatus.Duplicate, reservationId, e.Amount),
            { Status: "expired" } e => new ReleaseResult(ReleaseStatus.Expired, reservationId, e.Amount),
            { Status: "posted" } => new ReleaseResult(ReleaseStatus.AlreadyFinalized, reservationId, 0, "The reservation was already finalized."),
            _ => new ReleaseResult(ReleaseStatus.Invalid, reservationId, 0, "The reservation is not due yet."),
        };

    async Task<FinalizeResult> FinalizeInDatabaseAsync(string reservationId, long actualMicro, UsageRecord usage, LedgerSideWrite? alongside, CancellationToken ct)
    {
        const string Finalize = """
            SELECT o_status AS Status, o_amount AS Amount, o_actual AS Actual
            FROM ledger_finalize(@id, @actual, @at, @agent, @pool, @model, @prompt, @completion, @trace, @key, @fault)
            """;
        var args = new DynamicParameters(new
        {
            id = reservationId, actual = actualMicro, at = time.GetUtcNow().ToUnixTimeMilliseconds(), agent = usage.AgentId, pool = usage.Pool, model = usage.Model,
            prompt = usage.PromptTokens, completion = usage.CompletionTokens, trace = usage.TraceId, key = usage.IdempotencyKey, fault = FaultPoint,
        });
        var row = await CallAsync(async c =>
        {
            if (alongside is null)
            {
                return await c.QuerySingleAsync<StatusRow>(Finalize, args);
            }

            // Npgsql sends both statements in one round trip, which PostgreSQL runs as one implicit transaction.
            args.AddDynamicParams(alongside.Parameters);
            await using var results = await c.QueryMultipleAsync(Finalize + ";\n" + alongside.Sql, args);
            return await results.ReadSingleAsync<StatusRow>();
        }, ct);
        return row.Status switch
        {
            "finalized" => new FinalizeResult(FinalizeStatus.Finalized, reservationId, row.Amount, actualMicro, row.Amount - actualMicro),
            "not_found" => Unclaimed(reservationId, actualMicro, null),
            _ => Unclaimed(reservationId, actualMicro, row),
        };
    }

    static ReserveResult KeyTaken(string reservationId, long amountMicro) =>
        new(ReserveStatus.KeyTaken, reservationId, amountMicro, 0, 0, "The idempotency key is already claimed; nothing was reserved.");

    static FinalizeResult Unclaimed(string reservationId, long actualMicro, StatusRow? existing) =>
        existing switch
        {
            null => new FinalizeResult(FinalizeStatus.NotFound, reservationId, 0, actualMicro, 0, $"Reservation '{reservationId}' does not exist."),
            { Status: "posted" } e => new FinalizeResult(FinalizeStatus.Duplicate, reservationId, e.Amount, e.Actual ?? 0, e.Amount - (e.Actual ?? 0)),
            { Status: "voided" } e => new FinalizeResult(FinalizeStatus.AlreadyReleased, reservationId, e.Amount, 0, e.Amount, "The reservation was released."),
            { Status: "expired" } e => new FinalizeResult(FinalizeStatus.Expired, reservationId, e.Amount, 0, e.Amount, "The reservation expired before it was finalized."),
            { } e => new FinalizeResult(FinalizeStatus.ExceedsReservation, reservationId, e.Amount, actualMicro, 0,
                $"The actual cost {actualMicro} exceeds the reservation of {e.Amount} micro-USD."),
        };

    /// <summary>Debits lots earliest-expiry-first; the wallet row is already locked by this transaction.</summary>
    async Task DebitLotsAsync(DbConnection c, DbTransaction tx, string communityId, string transferId, string kind, long amount, long at)
    {
        if (amount == 0)
        {
            return;
        }

        var lots = await c.RowsAsync<LotBalance>(
            "SELECT id AS Id, remaining_micro AS Remaining FROM credit_lots WHERE community_id = @community AND remaining_micro > 0 " +
            "ORDER BY CASE WHEN expires_at IS NULL THEN 1 ELSE 0 END, expires_at, created_at, id" + (db.IsPostgres ? " FOR UPDATE" : ""),
            new { community = communityId }, tx);
        var left = amount;
        foreach (var (id, remaining) in lots)
        {
            var take = Math.Min(left, remaining);
            var updated = await c.ExecAsync("UPDATE credit_lots SET remaining_micro = remaining_micro - @take WHERE id = @id AND remaining_micro >= @take",
                new { id, take }, tx);
            if (updated != 1)
            {
                throw new InvalidOperationException($"Credit lot {id} changed under the wallet lock.");
            }

            await c.ExecAsync(
                "INSERT INTO lot_entries (lot_id, transfer_id, community_id, kind, amount_micro, created_at) VALUES (@lot, @transfer, @community, @kind, @amount, @at)",
                new { lot = id, transfer = transferId, community = communityId, kind, amount = take, at }, tx);
            left -= take;
            if (left == 0)
            {
                return;
            }
        }

        throw new InvalidOperationException($"The lots of community {communityId} cannot cover {amount} micro-USD although the wallet held it.");
    }

    async Task<bool> AddReservedAsync(DbConnection c, DbTransaction tx, string communityId, string month, long amount)
    {
        const string Reserve = """
            UPDATE budget_months SET reserved_micro = reserved_micro + @amount
            WHERE community_id = @community AND month = @month AND committed_micro + reserved_micro + @amount <= limit_micro
            """;
        var args = new { community = communityId, month, amount };
        if (await c.ExecAsync(Reserve, args, tx) == 1)
        {
            return true;
        }

        // First reserve of the month (or a refusal): make sure the month row exists, then try once more.
        var created = await EnsureMonthAsync(c, tx, communityId, month);
        return created && await c.ExecAsync(Reserve, args, tx) == 1;
    }

    internal static async Task<bool> EnsureMonthAsync(DbConnection c, DbTransaction tx, string communityId, string month) =>
        await c.ExecAsync(
            """
            INSERT INTO budget_months (community_id, month, limit_micro, committed_micro, reserved_micro)
            SELECT id, @month, monthly_budget_cents * 10000, 0, 0 FROM communities WHERE id = @community
            ON CONFLICT (community_id, month) DO NOTHING
            """,
            new { community = communityId, month }, tx) == 1;

    static async Task<long> BudgetRemainingAsync(DbConnection c, DbTransaction tx, string communityId, string month) =>
        await c.RowAsync<long?>(
            "SELECT limit_micro - committed_micro - reserved_micro FROM budget_months WHERE community_id = @community AND month = @month",
            new { community = communityId, month }, tx) ?? 0;

    static async Task<long> WalletAvailableAsync(DbConnection c, DbTransaction tx, string communityId) =>
        await c.RowAsync<long?>(
            "SELECT credits_posted - debits_posted - debits_pending FROM ledger_accounts WHERE id = @id",
            new { id = LedgerIds.Wallet(communityId) }, tx) ?? 0;

    /// <summary>
    /// The credit a reserve could hold now (what a budget refusal reports, which expires nothing): the wallet's available
    /// balance less what a reserve would first expire of the lots past their expiry that the reaper has not moved yet.
    /// </summary>
    internal static async Task<long> HoldableCreditAsync(DbConnection c, DbTransaction? tx, string communityId, long at)
    {
        var row = await c.RowAsync<CreditRow>(
            """
            SELECT w.credits_posted - w.debits_posted - w.debits_pending AS Available,
                   (SELECT CAST(SUM(l.remaining_micro) AS BIGINT) FROM credit_lots l
                    WHERE l.community_id = @community AND (l.expires_at IS NULL OR l.expires_at > @at)) AS Valid,
                   (SELECT CAST(SUM(l.remaining_micro) AS BIGINT) FROM credit_lots l
                    WHERE l.community_id = @community AND l.expires_at IS NOT NULL AND l.expires_at <= @at AND l.remaining_micro > 0) AS Due
            FROM ledger_accounts w WHERE w.id = @wallet
            """,
            new { community = communityId, wallet = LedgerIds.Wallet(communityId), at }, tx);
        return row is null ? 0 : HoldableCredit(row.Available, row.Valid ?? 0, row.Due ?? 0);
    }

    /// <summary>
    /// Of a wallet's <paramref name="available"/> balance, what remains once the due lots expire: all of each, but what
    /// pending holds need of the expired credit (<see cref="ExpireLotAsync"/>), i.e. at most the balance less the valid lots'.
    /// </summary>
    static long HoldableCredit(long available, long valid, long due) => available - Math.Max(0, Math.Min(due, available - valid));

    sealed class CreditRow
    {
        public long Available { get; set; }

        public long? Valid { get; set; }

        public long? Due { get; set; }
    }

    static Task InsertTransferAsync(DbConnection c, DbTransaction tx, string id, string communityId, string kind, string debit, string credit, long amount, string? pendingId, long at) =>
        c.ExecAsync(
            """
            INSERT INTO ledger_transfers (id, community_id, kind, debit_account_id, credit_account_id, amount_micro, pending_id, created_at)
            VALUES (@id, @community, @kind, @debit, @credit, @amount, @pending, @at)
            """,
            new { id, community = communityId, kind, debit, credit, amount, pending = pendingId, at }, tx);

    void Fault(string point)
    {
        if (FaultPoint == point)
        {
            throw new InvalidOperationException("injected DB error at " + point);
        }
    }

    /// <summary>Runs one write transaction; the work says whether to commit. Deadlocks and busy errors are retried.</summary>
    internal Task<T> WriteAsync<T>(Func<DbConnection, DbTransaction, Task<(T Result, bool Commit)>> work, CancellationToken ct) =>
        CallAsync(c => Database.InWriteTransactionAsync(c, work, ct), ct);

    /// <summary>Runs work on a fresh connection (one statement in autocommit is its own transaction); deadlocks and busy errors are retried.</summary>
    async Task<T> CallAsync<T>(Func<DbConnection, Task<T>> work, CancellationToken ct)
    {
        for (var attempt = 0; ; attempt++)
        {
            if (_postgresWrites is not null)
            {
                await _postgresWrites.WaitAsync(ct);
            }

            try
            {
                await using var writer = await db.OpenWriterAsync(ct);
                try
                {
                    return await work(writer.Connection);
                }
                catch
                {
                    writer.Discard();
                    throw;
                }
            }
            catch (Exception ex) when (attempt < 8 && Database.IsTransient(ex))
            {
                // retried below, after giving up the place in line
            }
            finally
            {
                _postgresWrites?.Release();
            }

            await Task.Delay(TimeSpan.FromMilliseconds(5 * (attempt + 1) + Random.Shared.Next(10)), ct);
        }
    }
}

/// <summary>A write of another store (SQL and its parameters) that a ledger operation commits together with its own.</summary>
public sealed record LedgerSideWrite(string Sql, object Parameters);

/// <summary>A request's idempotency key (scope, key, body hash) that a reservation claims together with itself, as its owner.</summary>
public sealed record LedgerKeyClaim(string Scope, string Key, string RequestHash);
