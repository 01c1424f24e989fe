using Arrakis.Freeside.Ledger;
using Arrakis.Shared.Storage;
using Dapper;

namespace Arrakis.Freeside.Budgets;

/// <summary>The public budget view: integers only, cents rounded down from micro-USD (DESIGN §2).</summary>
public sealed record BudgetView(
    string CommunityId,
    long MonthlyBudgetCents,
    long Committed,
    long SpentCents,
    long Reserved,
    long Available,
    long PercentUsed,
    long CommittedMicro,
    long ReservedMicro,
    long AvailableMicro,
    long CreditBalanceMicro,
    string Month);

public sealed class BudgetStore(Database db, TimeProvider time)
{
    public async Task<BudgetView?> GetAsync(string communityId, CancellationToken ct = default)
    {
        var now = time.GetUtcNow();
        var month = LedgerIds.Month(now);
        await using var c = await db.OpenAsync(ct);
        var row = await c.QuerySingleOrDefaultAsync<Row>(
            """
            SELECT c.monthly_budget_cents AS BudgetCents, b.limit_micro AS LimitMicro, b.committed_micro AS CommittedMicro, b.reserved_micro AS ReservedMicro
            FROM communities c
            LEFT JOIN budget_months b ON b.community_id = c.id AND b.month = @month
            WHERE c.id = @communityId
            """,
            new { communityId, month });
        if (row is null)
        {
            return null;
        }

        var limit = row.LimitMicro ?? row.BudgetCents * 10_000;
        var committed = row.CommittedMicro ?? 0;
        var reserved = row.ReservedMicro ?? 0;
        var available = Math.Max(0, limit - committed - reserved);
        var percent = limit == 0 ? (committed + reserved > 0 ? 100 : 0) : (long)(((decimal)committed + reserved) * 100 / limit);
        // The credit a reserve can hold now: lots past their expiry that the lot reaper has not moved out yet are not
        // counted, as a reserve expires them first (Ledger.ExpireLotAsync: all of each, but what pending holds need of the
        // expired credit). The balance showed that credit until the reaper's next pass, and a reserve it seemed to cover
        // was refused WALLET_INSUFFICIENT.
        return new BudgetView(communityId, limit / 10_000, committed / 10_000, committed / 10_000, reserved / 10_000, available / 10_000, percent,
            committed, reserved, available, await Ledger.Ledger.HoldableCreditAsync(c, null, communityId, now.ToUnixTimeMilliseconds()), month);
    }

    sealed class Row
    {
        public long BudgetCents { get; set; }
        public long? LimitMicro { get; set; }
        public long? CommittedMicro { get; set; }
        public long? ReservedMicro { get; set; }
    }
}
