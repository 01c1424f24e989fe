using System.Data.Common;
using Arrakis.Freeside.Ledger;
using Arrakis.Shared.Storage;
using Dapper;
using Microsoft.Extensions.Logging;

namespace Arrakis.Freeside.Audit;

public sealed record InvariantCheck(string Invariant, bool Passed, IReadOnlyList<string> Violations);

public sealed record CommunityAudit(string CommunityId, bool Passed, IReadOnlyList<InvariantCheck> Checks, BudgetGaugeValues Budget);

public sealed record BudgetGaugeValues(long CommittedMicro, long ReservedMicro, long LimitMicro)
{
    public long AvailableMicro => Math.Max(0, LimitMicro - CommittedMicro - ReservedMicro);

    public long OverspendMicro => Math.Max(0, CommittedMicro + ReservedMicro - LimitMicro);
}

public sealed record ConservationReport(bool Passed, DateTimeOffset CheckedAt, IReadOnlyList<CommunityAudit> Communities);

/// <summary>
/// Proves C1–C5 (DESIGN §3) from the stored rows, recomputing every balance from the immutable transfers, lot entries,
/// reservations and usage records. It never repairs anything: the ledger's own writes keep the invariants.
/// </summary>
public sealed partial class ConservationAudit(Database db, TimeProvider time, AuditMetrics metrics, ILogger<ConservationAudit> logger,
    Idempotency.IdempotencyOptions? idempotency = null)
{
    // A key is free again once its stored response has passed retention, so two charges further apart are two requests.
    readonly long _keyRetentionMs = (long)(idempotency ?? new Idempotency.IdempotencyOptions()).Retention.TotalMilliseconds;

    public async Task<ConservationReport> RunAsync(CancellationToken ct = default)
    {
        List<string> ids;
        await using (var c = await db.OpenAsync(ct))
        {
            ids = (await c.QueryAsync<string>("SELECT id FROM communities ORDER BY id")).ToList();
        }

        var audits = new List<CommunityAudit>();
        foreach (var id in ids)
        {
            audits.Add(await AuditCommunityAsync(id, ct));
        }

        var report = new ConservationReport(audits.All(a => a.Passed), time.GetUtcNow(), audits);
        metrics.Record(report);
        foreach (var audit in audits)
        {
            foreach (var check in audit.Checks.Where(c => !c.Passed))
            {
                LogViolation(logger, audit.CommunityId, check.Invariant, string.Join("; ", check.Violations));
            }
        }

        return report;
    }

    /// <summary>Audits one community without recording metrics (the simulation calls this after every step).</summary>
    public async Task<CommunityAudit> AuditCommunityAsync(string communityId, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        // One snapshot for all queries: a repeatable-read transaction on PostgreSQL, a read transaction on SQLite.
        await using var tx = db.IsPostgres
            ? await c.BeginTransactionAsync(System.Data.IsolationLevel.RepeatableRead, ct)
            : await c.BeginTransactionAsync(ct);
        var p = new { c = communityId };
        // The limit of a month that has no row yet (none until its first reserve), as the budget view and the reserve take it.
        var budgetCents = await c.ExecuteScalarAsync<long>("SELECT monthly_budget_cents FROM communities WHERE id = @c", p, tx);
        var months = (await c.QueryAsync<MonthRow>(
            "SELECT month AS Month, limit_micro AS LimitMicro, committed_micro AS CommittedMicro, reserved_micro AS ReservedMicro FROM budget_months WHERE community_id = @c", p, tx)).ToList();
        var pendingByMonth = (await c.QueryAsync<MonthSum>(
            "SELECT month AS Month, CAST(SUM(amount_micro) AS BIGINT) AS Total FROM reservations WHERE community_id = @c AND status = 'pending' GROUP BY month", p, tx)).ToDictionary(r => r.Month, r => r.Total);
        var usageByMonth = (await c.QueryAsync<MonthSum>(
            "SELECT month AS Month, CAST(SUM(cost_micro) AS BIGINT) AS Total FROM usage_records WHERE community_id = @c GROUP BY month", p, tx)).ToDictionary(r => r.Month, r => r.Total);
        var accounts = (await c.QueryAsync<AccountRow>(
            "SELECT id AS Id, code AS Code, debits_pending AS DebitsPending, debits_posted AS DebitsPosted, credits_pending AS CreditsPending, credits_posted AS CreditsPosted FROM ledger_accounts WHERE community_id = @c",
            p, tx)).ToDictionary(a => a.Code);
        var lots = (await c.QueryAsync<LotRow>(
            """
            SELECT l.id AS Id, l.amount_micro AS Amount, l.remaining_micro AS Remaining,
                   CAST(COALESCE(SUM(CASE WHEN e.kind = 'credit' THEN e.amount_micro ELSE 0 END), 0) AS BIGINT) AS Credits,
                   CAST(COALESCE(SUM(CASE WHEN e.kind <> 'credit' THEN e.amount_micro ELSE 0 END), 0) AS BIGINT) AS Debits
            FROM credit_lots l LEFT JOIN lot_entries e ON e.lot_id = l.id
            WHERE l.community_id = @c GROUP BY l.id, l.amount_micro, l.remaining_micro
            """, p, tx)).ToList();
        var posted = (await c.QueryAsync<FlowRow>(
            "SELECT debit_account_id AS Debit, credit_account_id AS Credit, CAST(SUM(amount_micro) AS BIGINT) AS Total FROM ledger_transfers WHERE community_id = @c AND kind IN ('grant','post','lot_expiry') GROUP BY debit_account_id, credit_account_id",
            p, tx)).ToList();
        var openPending = await c.ExecuteScalarAsync<long?>(
            "SELECT CAST(SUM(t.amount_micro) AS BIGINT) FROM ledger_transfers t WHERE t.community_id = @c AND t.kind = 'pending' AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = t.id)",
            p, tx) ?? 0;
        var pendingReservations = pendingByMonth.Values.Sum();
        var doubleResolved = (await c.QueryAsync<string>(
            "SELECT pending_id FROM ledger_transfers WHERE community_id = @c AND pending_id IS NOT NULL GROUP BY pending_id HAVING COUNT(*) > 1", p, tx)).ToList();
        var postedWithoutUsage = await c.ExecuteScalarAsync<long>(
            "SELECT COUNT(*) FROM reservations r WHERE r.community_id = @c AND r.status = 'posted' AND NOT EXISTS (SELECT 1 FROM usage_records u WHERE u.id = r.id)", p, tx);
        var usageWithoutPost = await c.ExecuteScalarAsync<long>(
            "SELECT COUNT(*) FROM usage_records u WHERE u.community_id = @c AND NOT EXISTS (SELECT 1 FROM reservations r WHERE r.id = u.id AND r.status = 'posted' AND r.actual_micro = u.cost_micro)", p, tx);
        var resolvedWithoutTransfer = await c.ExecuteScalarAsync<long>(
            "SELECT COUNT(*) FROM reservations r WHERE r.community_id = @c AND r.status <> 'pending' AND NOT EXISTS (SELECT 1 FROM ledger_transfers t WHERE t.pending_id = 'r:' || r.id)", p, tx);
        // Each reservation against its own transfers: the pending one holds its amount, a post its actual (never more than
        // the amount), a void or expiry its amount. The balances above are sums, so a charge recorded consistently in every
        // ledger row but not as the reservation and usage record say would otherwise pass.
        var mismatched = (await c.QueryAsync<TransferMismatch>(
            """
            SELECT r.id AS Id, r.status AS Status, r.amount_micro AS Amount, r.actual_micro AS Actual, p.amount_micro AS Pending, f.kind AS Kind, f.amount_micro AS Resolved
            FROM reservations r
            LEFT JOIN ledger_transfers p ON p.id = 'r:' || r.id
            LEFT JOIN ledger_transfers f ON f.pending_id = 'r:' || r.id
            WHERE r.community_id = @c AND (
                p.amount_micro IS NULL OR p.amount_micro <> r.amount_micro
                OR (r.status = 'posted' AND (r.actual_micro IS NULL OR r.actual_micro > r.amount_micro OR f.kind <> 'post' OR f.amount_micro <> r.actual_micro))
                OR (r.status = 'voided' AND (f.kind <> 'void' OR f.amount_micro <> r.amount_micro))
                OR (r.status = 'expired' AND (f.kind <> 'expire' OR f.amount_micro <> r.amount_micro)))
            ORDER BY r.id
            """, p, tx)).ToList();
        var usageTotal = await c.ExecuteScalarAsync<long?>("SELECT CAST(SUM(cost_micro) AS BIGINT) FROM usage_records WHERE community_id = @c", p, tx) ?? 0;
        // C4's third clause, a payment mints at most one credit note: every payment lot (source x402, id x402:<payment>,
        // as PaymentFlow names it) is the note of exactly one settled payment of this community, for the amount the payment
        // credited, and no two payments name the same lot.
        var x402LotsWithoutPayment = (await c.QueryAsync<string>(
            """
            SELECT l.id FROM credit_lots l WHERE l.community_id = @c AND l.source = 'x402' AND l.id LIKE 'x402:%' AND NOT EXISTS (
                SELECT 1 FROM x402_payments x WHERE x.credit_lot_id = l.id AND x.community_id = l.community_id AND x.state = 'settled' AND x.credit_micro = l.amount_micro)
            ORDER BY l.id
            """, p, tx)).ToList();
        var lotsOfTwoPayments = (await c.QueryAsync<(string Lot, long Count)>(
            "SELECT credit_lot_id AS Lot, COUNT(*) AS Count FROM x402_payments WHERE community_id = @c AND credit_lot_id IS NOT NULL GROUP BY credit_lot_id HAVING COUNT(*) > 1 ORDER BY credit_lot_id",
            p, tx)).ToList();
        var keysChargedTwice = (await c.QueryAsync<(string Key, long Count)>(
            """
            SELECT idempotency_key AS Key, COUNT(*) AS Count FROM usage_records
            WHERE community_id = @c AND idempotency_key IS NOT NULL
            GROUP BY idempotency_key HAVING COUNT(*) > 1 AND MAX(created_at) - MIN(created_at) < @retention
            """, new { c = communityId, retention = _keyRetentionMs }, tx)).ToList();
        await tx.CommitAsync(ct);

        var c1 = new List<string>();
        foreach (var m in months)
        {
            if (m.CommittedMicro < 0 || m.ReservedMicro < 0 || m.LimitMicro < 0)
            {
                c1.Add($"{m.Month}: negative term (committed {m.CommittedMicro}, reserved {m.ReservedMicro}, limit {m.LimitMicro})");
            }

            if (m.CommittedMicro + m.ReservedMicro > m.LimitMicro)
            {
                c1.Add($"{m.Month}: committed {m.CommittedMicro} + reserved {m.ReservedMicro} > limit {m.LimitMicro}");
            }

            var pending = pendingByMonth.GetValueOrDefault(m.Month);
            if (m.ReservedMicro != pending)
            {
                c1.Add($"{m.Month}: reserved {m.ReservedMicro} != pending reservations {pending}");
            }
        }

        foreach (var month in pendingByMonth.Keys.Except(months.Select(m => m.Month)))
        {
            c1.Add($"{month}: pending reservations without a budget month");
        }

        var c2 = new List<string>();
        var c3 = new List<string>();
        var wallet = accounts.GetValueOrDefault("wallet");
        var spend = accounts.GetValueOrDefault("spend");
        if (wallet is null || spend is null || !accounts.ContainsKey("issuance") || !accounts.ContainsKey("expired"))
        {
            c3.Add("ledger accounts missing");
        }
        else
        {
            var balance = wallet.CreditsPosted - wallet.DebitsPosted;
            var lotsRemaining = lots.Sum(l => l.Remaining);
            if (balance != lotsRemaining)
            {
                c2.Add($"wallet credits - debits = {balance} != lots remaining {lotsRemaining}");
            }

            if (balance - wallet.DebitsPending < 0)
            {
                c2.Add($"wallet available {balance - wallet.DebitsPending} < 0");
            }

            if (wallet.DebitsPending != pendingReservations)
            {
                c2.Add($"wallet pending holds {wallet.DebitsPending} != pending reservations {pendingReservations}");
            }

            var all = accounts.Values;
            if (all.Sum(a => a.DebitsPosted) != all.Sum(a => a.CreditsPosted))
            {
                c3.Add($"posted debits {all.Sum(a => a.DebitsPosted)} != posted credits {all.Sum(a => a.CreditsPosted)}");
            }

            if (all.Sum(a => a.DebitsPending) != all.Sum(a => a.CreditsPending))
            {
                c3.Add($"pending debits {all.Sum(a => a.DebitsPending)} != pending credits {all.Sum(a => a.CreditsPending)}");
            }

            foreach (var a in all)
            {
                var debits = posted.Where(f => f.Debit == a.Id).Sum(f => f.Total);
                var credits = posted.Where(f => f.Credit == a.Id).Sum(f => f.Total);
                if (a.DebitsPosted != debits || a.CreditsPosted != credits)
                {
                    c3.Add($"account {a.Id}: posted {a.DebitsPosted}/{a.CreditsPosted} != transfers {debits}/{credits}");
                }
            }

            if (wallet.DebitsPending != openPending || spend.CreditsPending != openPending)
            {
                c3.Add($"pending columns {wallet.DebitsPending}/{spend.CreditsPending} != open pending transfers {openPending}");
            }
        }

        foreach (var lot in lots)
        {
            if (lot.Remaining < 0 || lot.Credits != lot.Amount || lot.Amount - lot.Debits != lot.Remaining)
            {
                c2.Add($"lot {lot.Id}: amount {lot.Amount}, credited {lot.Credits}, debited {lot.Debits}, remaining {lot.Remaining}");
            }
        }

        var c4 = new List<string>();
        c4.AddRange(doubleResolved.Select(id => $"pending transfer {id} resolved more than once"));
        if (postedWithoutUsage > 0)
        {
            c4.Add($"{postedWithoutUsage} finalized reservations without a usage record");
        }

        if (usageWithoutPost > 0)
        {
            c4.Add($"{usageWithoutPost} usage records without a matching finalized reservation");
        }

        if (resolvedWithoutTransfer > 0)
        {
            c4.Add($"{resolvedWithoutTransfer} resolved reservations without a resolving transfer");
        }

        c4.AddRange(mismatched.Select(m => $"reservation {m.Id} ({m.Status}, {m.Amount}, actual {(m.Actual is { } a ? a : "-")}): " +
            (m.Pending != m.Amount ? $"pending transfer {(m.Pending is { } pt ? pt : "missing")}" : $"{m.Kind ?? "no"} transfer {(m.Resolved is { } rt ? rt : "-")}")));
        c4.AddRange(keysChargedTwice.Select(k => $"idempotency key '{k.Key}' charged {k.Count} times"));
        c4.AddRange(x402LotsWithoutPayment.Select(l => $"x402 credit lot {l} is not the credit note of one settled payment for its amount"));
        c4.AddRange(lotsOfTwoPayments.Select(l => $"x402 credit lot {l.Lot} is named by {l.Count} payments"));

        var c5 = new List<string>();
        foreach (var m in months)
        {
            var usage = usageByMonth.GetValueOrDefault(m.Month);
            if (usage != m.CommittedMicro)
            {
                c5.Add($"{m.Month}: usage records sum {usage} != committed {m.CommittedMicro}");
            }
        }

        foreach (var month in usageByMonth.Keys.Except(months.Select(m => m.Month)))
        {
            c5.Add($"{month}: usage records without a budget month");
        }

        // The ledger's side of the same spend: the spend account is credited by posts only, so it holds every usage record.
        if (spend is not null && spend.CreditsPosted != usageTotal)
        {
            c5.Add($"spend account posted {spend.CreditsPosted} != usage records {usageTotal}");
        }

        var checks = new[]
        {
            new InvariantCheck("C1", c1.Count == 0, c1),
            new InvariantCheck("C2", c2.Count == 0, c2),
            new InvariantCheck("C3", c3.Count == 0, c3),
            new InvariantCheck("C4", c4.Count == 0, c4),
            new InvariantCheck("C5", c5.Count == 0, c5),
        };
        var current = months.FirstOrDefault(m => m.Month == LedgerIds.Month(time.GetUtcNow()));
        var gauge = current is null
            ? new BudgetGaugeValues(0, 0, budgetCents * 10_000)
            : new BudgetGaugeValues(current.CommittedMicro, current.ReservedMicro, current.LimitMicro);
        return new CommunityAudit(communityId, checks.All(x => x.Passed), checks, gauge);
    }

    [LoggerMessage(EventId = 3201, EventName = "CONSERVATION_VIOLATION", Level = LogLevel.Error,
        Message = "CONSERVATION_VIOLATION community={CommunityId} invariant={Invariant} details={Details}")]
    static partial void LogViolation(ILogger logger, string communityId, string invariant, string details);

    sealed class MonthRow
    {
        public string Month { get; set; } = "";
        public long LimitMicro { get; set; }
        public long CommittedMicro { get; set; }
        public long ReservedMicro { get; set; }
    }

    sealed class MonthSum
    {
        public string Month { get; set; } = "";
        public long Total { get; set; }
    }

    sealed class AccountRow
    {
        public string Id { get; set; } = "";
        public string Code { get; set; } = "";
        public long DebitsPending { get; set; }
        public long DebitsPosted { get; set; }
        public long CreditsPending { get; set; }
        public long CreditsPosted { get; set; }
    }

    sealed class LotRow
    {
        public string Id { get; set; } = "";
        public long Amount { get; set; }
        public long Remaining { get; set; }
        public long Credits { get; set; }
        public long Debits { get; set; }
    }

    sealed class TransferMismatch
    {
        public string Id { get; set; } = "";
        public string Status { get; set; } = "";
        public long Amount { get; set; }
        public long? Actual { get; set; }
        public long? Pending { get; set; }
        public string? Kind { get; set; }
        public long? Resolved { get; set; }
    }

    sealed class FlowRow
    {
        public string Debit { get; set; } = "";
        public string Credit { get; set; } = "";
        public long Total { get; set; }
    }
}
