using System.Collections.Concurrent;
using System.Diagnostics;
using Arrakis.Freeside.Communities;
using Arrakis.Freeside.Ledger;
using Arrakis.Shared.Contracts;

namespace Arrakis.Freeside.Tests.Ledger;

public sealed class LedgerTests
{
    public static TheoryData<string> Engines => TestStorage.Engines();

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Reserve_then_finalize_posts_actual_releases_rest_and_writes_one_usage_record(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 100, creditMicro: 2_000_000);

        var reserve = await w.Ledger.ReserveAsync("c1", "r1", 300_000);
        Assert.Equal(ReserveStatus.Reserved, reserve.Status);
        Assert.Equal(700_000, reserve.BudgetRemainingMicro);
        Assert.Equal(1_700_000, reserve.WalletAvailableMicro);

        var final = await w.Ledger.FinalizeAsync("r1", 120_000, new UsageRecord("agent-1", "cheap", "m1", 10, 20, "trace-1", "key-1"));
        Assert.Equal(FinalizeStatus.Finalized, final.Status);
        Assert.Equal(180_000, final.ReleasedMicro);

        var budget = await w.Budgets.GetAsync("c1");
        Assert.NotNull(budget);
        Assert.Equal(120_000, budget.CommittedMicro);
        Assert.Equal(0, budget.ReservedMicro);
        Assert.Equal(12, budget.Committed);
        Assert.Equal(1_880_000, budget.CreditBalanceMicro);
        var usage = await w.Usage.FindByTraceAsync("trace-1");
        Assert.NotNull(usage);
        Assert.Equal(("cheap", "m1", 120_000L), (usage.Pool, usage.Model, usage.CostMicro));
        Assert.Equal("trace-1", (await w.Usage.LatestForAgentAsync("agent-1"))!.TraceId);

        var again = await w.Ledger.FinalizeAsync("r1", 120_000, new UsageRecord());
        Assert.Equal(FinalizeStatus.Duplicate, again.Status);
        Assert.Equal(1, await w.ScalarAsync<long>("SELECT COUNT(*) FROM usage_records"));
        await w.AssertConservedAsync();
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Reserve_is_refused_by_the_budget_and_by_the_wallet_and_release_returns_everything(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 10, creditMicro: 50_000);

        Assert.Equal(ReserveStatus.BudgetExceeded, (await w.Ledger.ReserveAsync("c1", "big", 100_001)).Status);
        var wallet = await w.Ledger.ReserveAsync("c1", "wallet", 60_000);
        Assert.Equal(ReserveStatus.WalletInsufficient, wallet.Status);
        Assert.Equal(50_000, wallet.WalletAvailableMicro);
        Assert.Null(await w.Ledger.FindReservationAsync("wallet"));

        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "ok", 50_000)).Status);
        Assert.Equal(ReserveStatus.Duplicate, (await w.Ledger.ReserveAsync("c1", "ok", 50_000)).Status);
        Assert.Equal(ReserveStatus.WalletInsufficient, (await w.Ledger.ReserveAsync("c1", "more", 1)).Status);
        Assert.Equal(ReleaseStatus.Released, (await w.Ledger.ReleaseAsync("ok")).Status);
        Assert.Equal(ReleaseStatus.Duplicate, (await w.Ledger.ReleaseAsync("ok")).Status);
        Assert.Equal(FinalizeStatus.AlreadyReleased, (await w.Ledger.FinalizeAsync("ok", 1, new UsageRecord())).Status);
        var budget = await w.Budgets.GetAsync("c1");
        Assert.Equal((0L, 0L, 50_000L), (budget!.CommittedMicro, budget.ReservedMicro, budget.CreditBalanceMicro));
        await w.AssertConservedAsync();
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task A_refused_first_reserve_of_a_month_leaves_nothing_behind(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 10, creditMicro: 50_000);
        w.Time.Advance(TimeSpan.FromDays(40));
        var month = new { month = LedgerIds.Month(w.Time.GetUtcNow()) };

        var budget = await w.Ledger.ReserveAsync("c1", "big", 100_001);
        Assert.Equal((ReserveStatus.BudgetExceeded, 100_000L, 50_000L), (budget.Status, budget.BudgetRemainingMicro, budget.WalletAvailableMicro));
        var wallet = await w.Ledger.ReserveAsync("c1", "wide", 60_000);
        Assert.Equal((ReserveStatus.WalletInsufficient, 100_000L, 50_000L), (wallet.Status, wallet.BudgetRemainingMicro, wallet.WalletAvailableMicro));
        Assert.Equal(0L, await w.ScalarAsync<long>("SELECT COUNT(*) FROM budget_months WHERE month = @month", month));
        Assert.Equal(0L, await w.ScalarAsync<long>("SELECT COUNT(*) FROM reservations"));

        var ok = await w.Ledger.ReserveAsync("c1", "ok", 40_000);
        Assert.Equal((ReserveStatus.Reserved, 60_000L, 10_000L), (ok.Status, ok.BudgetRemainingMicro, ok.WalletAvailableMicro));
        Assert.Equal(1L, await w.ScalarAsync<long>("SELECT COUNT(*) FROM budget_months WHERE month = @month", month));
        await w.AssertConservedAsync();
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task An_injected_fault_mid_operation_commits_nothing_of_it(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 100, creditMicro: 500_000);
        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "held", 10_000)).Status);
        var transfers = await w.ScalarAsync<long>("SELECT COUNT(*) FROM ledger_transfers");
        foreach (var point in new[] { "reserve.after-insert", "reserve.after-wallet", "finalize.after-claim", "finalize.after-wallet", "release.after-claim" })
        {
            // On PostgreSQL the ledger function raises at the point, inside the one statement's transaction.
            w.Ledger.FaultPoint = point;
            Task work = point.Split('.')[0] switch
            {
                "reserve" => w.Ledger.ReserveAsync("c1", "faulty", 1_000),
                "finalize" => w.Ledger.FinalizeAsync("held", 5_000, new UsageRecord()),
                _ => w.Ledger.ReleaseAsync("held"),
            };
            var ex = await Assert.ThrowsAnyAsync<Exception>(() => work);
            w.Ledger.FaultPoint = null;

            Assert.Contains("injected DB error at " + point, ex.Message, StringComparison.Ordinal);
            Assert.Null(await w.Ledger.FindReservationAsync("faulty"));
            Assert.Equal("pending", (await w.Ledger.FindReservationAsync("held"))!.Status);
            Assert.Equal(transfers, await w.ScalarAsync<long>("SELECT COUNT(*) FROM ledger_transfers"));
            await w.AssertConservedAsync(point);
        }

        var after = await w.Budgets.GetAsync("c1");
        Assert.Equal((0L, 10_000L), (after!.CommittedMicro, after.ReservedMicro));
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Bad_inputs_are_refused_and_change_nothing(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 100, creditMicro: 1_000_000);
        var before = await w.ScalarAsync<long>("SELECT COUNT(*) FROM ledger_transfers");

        Assert.Equal(ReserveStatus.Invalid, (await w.Ledger.ReserveAsync("c1", "neg", -5)).Status);
        Assert.Equal(ReserveStatus.Invalid, (await w.Ledger.ReserveAsync("c1", "zero", 0)).Status);
        Assert.Equal(ReserveStatus.Invalid, (await w.Ledger.ReserveAsync("c1", "overflow", long.MaxValue)).Status);
        Assert.Equal(ReserveStatus.Invalid, (await w.Ledger.ReserveAsync("c1", "bad id!", 5)).Status);
        Assert.Equal(ReserveStatus.Invalid, (await w.Ledger.ReserveAsync("c1", new string('k', 256), 5)).Status);
        Assert.Equal(ReserveStatus.CommunityNotFound, (await w.Ledger.ReserveAsync("nope", "r", 5)).Status);
        Assert.Equal(GrantStatus.Invalid, (await w.Ledger.GrantAsync("c1", "lot-neg", -1, "grant")).Status);
        Assert.Equal(GrantStatus.Invalid, (await w.Ledger.GrantAsync("c1", "lot-src", 1, "staging-seed")).Status);
        Assert.Equal(GrantStatus.CommunityNotFound, (await w.Ledger.GrantAsync("nope", "lot-x", 1, "grant")).Status);
        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "r1", 100)).Status);
        Assert.Equal(FinalizeStatus.ExceedsReservation, (await w.Ledger.FinalizeAsync("r1", 101, new UsageRecord())).Status);
        Assert.Equal(FinalizeStatus.Invalid, (await w.Ledger.FinalizeAsync("r1", -1, new UsageRecord())).Status);
        Assert.Equal(FinalizeStatus.NotFound, (await w.Ledger.FinalizeAsync("r404", 1, new UsageRecord())).Status);
        Assert.Equal("pending", (await w.Ledger.FindReservationAsync("r1"))!.Status);
        Assert.Equal(before + 1, await w.ScalarAsync<long>("SELECT COUNT(*) FROM ledger_transfers"));

        Assert.Equal(CommunityStatus.Invalid, (await w.Communities.UpsertAsync("c2", "x", Tier.Free, -1)).Status);
        Assert.Equal(CommunityStatus.Created, (await w.Communities.UpsertAsync("c2", "x", Tier.Free, 1)).Status);
        Assert.Equal(CommunityStatus.Updated, (await w.Communities.SetAliasAsync("a", "c1")).Status);
        Assert.Equal(CommunityStatus.Updated, (await w.Communities.SetAliasAsync("b", "a")).Status);
        Assert.Equal(CommunityStatus.AliasCycle, (await w.Communities.SetAliasAsync("a", "b")).Status);
        Assert.Equal(CommunityStatus.AliasCycle, (await w.Communities.SetAliasAsync("c", "c")).Status);
        Assert.Equal(CommunityStatus.NotFound, (await w.Communities.SetAliasAsync("d", "missing")).Status);
        Assert.Equal("c1", await w.Communities.ResolveTenantAsync("b"));
        Assert.Null(await w.Communities.ResolveTenantAsync("c"));
        await w.AssertConservedAsync();
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Budget_resets_on_the_first_of_the_month_and_lots_are_spent_earliest_expiry_first(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 10);
        await w.Ledger.GrantAsync("c1", "late", 100_000, "purchase", LedgerWorld.Start.AddDays(60));
        await w.Ledger.GrantAsync("c1", "soon", 100_000, "x402", LedgerWorld.Start.AddDays(2));
        Assert.Equal(GrantStatus.Duplicate, (await w.Ledger.GrantAsync("c1", "soon", 100_000, "x402", LedgerWorld.Start.AddDays(2))).Status);
        Assert.Equal(GrantStatus.Conflict, (await w.Ledger.GrantAsync("c1", "soon", 5, "x402")).Status);

        await w.Ledger.ReserveAsync("c1", "jan", 100_000);
        await w.Ledger.FinalizeAsync("jan", 90_000, new UsageRecord());
        Assert.Equal(ReserveStatus.BudgetExceeded, (await w.Ledger.ReserveAsync("c1", "jan2", 20_000)).Status);
        Assert.Equal(10_000, await w.ScalarAsync<long>("SELECT remaining_micro FROM credit_lots WHERE id = 'soon'"));

        w.Time.Advance(TimeSpan.FromHours(2)); // 2026-02-01T00:00Z
        var feb = await w.Budgets.GetAsync("c1");
        Assert.Equal(("2026-02", 0L), (feb!.Month, feb.CommittedMicro));
        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "feb", 20_000)).Status);
        await w.Ledger.FinalizeAsync("feb", 20_000, new UsageRecord());
        Assert.Equal(0, await w.ScalarAsync<long>("SELECT remaining_micro FROM credit_lots WHERE id = 'soon'"));
        Assert.Equal(90_000, await w.ScalarAsync<long>("SELECT remaining_micro FROM credit_lots WHERE id = 'late'"));
        await w.AssertConservedAsync();
    }

    /// <summary>
    /// Credit that expired cannot be held, even before the lot reaper has moved it out (it runs every few seconds, or never
    /// if it stopped): the reserve expires the community's due lots itself first. Before, a lot that expired half an hour
    /// ago was reserved and spent whole. A lot kept alive by a hold made while it was valid still pays that hold. The
    /// budget's credit balance says so too (it showed the expired credit until the reaper's next pass).
    /// </summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task A_reserve_cannot_hold_credit_that_has_expired_before_the_reaper_runs(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 1_000);
        await w.Ledger.GrantAsync("c1", "short", 100_000, "purchase", LedgerWorld.Start.AddMinutes(30));
        await w.Ledger.GrantAsync("c1", "long", 30_000, "purchase", LedgerWorld.Start.AddDays(60));
        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "held", 60_000)).Status); // while "short" is valid

        w.Time.Advance(TimeSpan.FromHours(1)); // "short" expired half an hour ago; no reaper has run
        Assert.Equal(30_000, (await w.Budgets.GetAsync("c1"))!.CreditBalanceMicro); // what a reserve can hold: "long" alone
        var late = await w.Ledger.ReserveAsync("c1", "late", 50_000);
        Assert.Equal((ReserveStatus.WalletInsufficient, 30_000L), (late.Status, late.WalletAvailableMicro)); // only "long" is left to hold
        Assert.Equal(FinalizeStatus.Finalized, (await w.Ledger.FinalizeAsync("held", 60_000, new UsageRecord())).Status); // paid by "short"
        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "fits", 30_000)).Status); // "long", whole
        Assert.Equal(0, await w.Ledger.ExpireLotsAsync()); // nothing left for the reaper
        // Of "short", the 60,000 the hold needed paid it and the other 40,000 expired; "long" lost nothing to the expiry.
        Assert.Equal(40_000, await w.ScalarAsync<long>("SELECT credits_posted FROM ledger_accounts WHERE id = 'c1:expired'"));
        Assert.Equal((0L, 30_000L), (await w.ScalarAsync<long>("SELECT remaining_micro FROM credit_lots WHERE id = 'short'"),
            await w.ScalarAsync<long>("SELECT remaining_micro FROM credit_lots WHERE id = 'long'")));
        await w.AssertConservedAsync();
    }

    /// <summary>
    /// The reaper keeps of an expired lot only what pending holds need of it, not what they could take from a valid lot:
    /// holds draw on the earliest-expiring credit first. It capped the expiry at the wallet's available balance alone, so
    /// with a 60,000 hold, an expired lot of 100,000 and a valid one of 30,000 it burned 70,000 (the valid lot's 30,000
    /// was then spent on the hold) instead of 40,000.
    /// </summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task The_reaper_expires_only_the_expired_credit_that_holds_do_not_need(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 1_000);
        await w.Ledger.GrantAsync("c1", "short", 100_000, "purchase", LedgerWorld.Start.AddMinutes(30));
        await w.Ledger.GrantAsync("c1", "long", 30_000, "purchase", LedgerWorld.Start.AddDays(60));
        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "held", 60_000)).Status);

        w.Time.Advance(TimeSpan.FromHours(1));
        Assert.Equal(1, await w.Ledger.ExpireLotsAsync());
        Assert.Equal(40_000, await w.ScalarAsync<long>("SELECT credits_posted FROM ledger_accounts WHERE id = 'c1:expired'"));
        Assert.Equal(30_000, (await w.Ledger.ReserveAsync("c1", "probe", 1_000_000)).WalletAvailableMicro); // "long" is still all there
        await w.AssertConservedAsync();
    }

    /// <summary>
    /// The reaper walks every expired lot, not one page of them. Community "held" has more expired lots than a page, all
    /// kept alive by a pending hold on its whole wallet (nothing of them may expire); community "later", created after,
    /// has one expired lot and no holds. With one unordered page the held lots filled it on every pass and the later
    /// community's lot never expired.
    /// </summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task A_page_of_held_expired_lots_does_not_stop_other_lots_expiring(string engine)
    {
        const int page = 20;
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("held", budgetCents: 100);
        for (var i = 0; i < page + 5; i++)
        {
            Assert.Equal(GrantStatus.Granted, (await w.Ledger.GrantAsync("held", $"held-lot-{i:D3}", 1_000, "grant", LedgerWorld.Start.AddHours(1))).Status);
        }

        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("held", "hold-all", (page + 5) * 1_000, TimeSpan.FromDays(1))).Status);
        await w.CommunityAsync("later", budgetCents: 100);
        Assert.Equal(GrantStatus.Granted, (await w.Ledger.GrantAsync("later", "later-lot", 5_000, "grant", LedgerWorld.Start.AddHours(1))).Status);
        w.Time.Advance(TimeSpan.FromHours(2));

        Assert.Equal(1, await w.Ledger.ExpireLotsAsync(page));
        Assert.Equal(0, await w.ScalarAsync<long>("SELECT remaining_micro FROM credit_lots WHERE id = 'later-lot'"));
        Assert.Equal((page + 5) * 1_000, await w.ScalarAsync<long>("SELECT SUM(remaining_micro) FROM credit_lots WHERE community_id = 'held'"));
        await w.AssertConservedAsync();
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Duplicate_finalize_and_reaper_races_never_double_count_or_lose_an_amount(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 100_000, creditMicro: 1_000_000_000);
        for (var i = 0; i < 40; i++)
        {
            var id = $"race-{i}";
            Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", id, 1_000, TimeSpan.FromSeconds(1))).Status);
            w.Time.Advance(TimeSpan.FromSeconds(i % 2 == 0 ? 2 : 0)); // even ids are due for the reaper
            var tasks = new List<Task<object>>
            {
                Task.Run(async () => (object)await w.Ledger.FinalizeAsync(id, 700, new UsageRecord())),
                Task.Run(async () => (object)await w.Ledger.FinalizeAsync(id, 700, new UsageRecord())),
                Task.Run(async () => (object)await w.Ledger.ExpireDueAsync()),
                Task.Run(async () => (object)await w.Ledger.ReleaseAsync(id)),
            };
            var results = await Task.WhenAll(tasks);
            var finals = results.OfType<FinalizeResult>().Count(r => r.Status == FinalizeStatus.Finalized);
            var release = (ReleaseResult)results[3];
            var expired = (int)results[2];
            Assert.Equal(1, finals + (release.Status == ReleaseStatus.Released ? 1 : 0) + expired);
        }

        var posted = await w.ScalarAsync<long>("SELECT COUNT(*) FROM reservations WHERE status = 'posted'");
        Assert.Equal(posted * 700, (await w.Budgets.GetAsync("c1"))!.CommittedMicro);
        Assert.Equal(posted, await w.ScalarAsync<long>("SELECT COUNT(*) FROM usage_records"));
        await w.AssertConservedAsync();
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task A_renewed_reservation_outlives_its_first_ttl_and_only_a_pending_one_renews(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 1_000, creditMicro: 1_000_000_000);
        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "long", 5_000, TimeSpan.FromSeconds(10))).Status);
        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "short", 5_000, TimeSpan.FromSeconds(10))).Status);

        w.Time.Advance(TimeSpan.FromSeconds(8));
        Assert.True(await w.Ledger.RenewAsync("long", TimeSpan.FromSeconds(10)));
        Assert.True(await w.Ledger.RenewAsync("long", TimeSpan.FromSeconds(1))); // still pending; a shorter renewal never shortens the hold
        w.Time.Advance(TimeSpan.FromSeconds(4)); // 12 s in: "short" is due, "long" holds until 18 s

        Assert.Equal(1, await w.Ledger.ExpireDueAsync());
        Assert.Equal(FinalizeStatus.Expired, (await w.Ledger.FinalizeAsync("short", 1_000, new UsageRecord())).Status);
        Assert.Equal(FinalizeStatus.Finalized, (await w.Ledger.FinalizeAsync("long", 4_000, new UsageRecord())).Status);

        Assert.False(await w.Ledger.RenewAsync("long")); // resolved: nothing to renew
        Assert.False(await w.Ledger.RenewAsync("short"));
        Assert.False(await w.Ledger.RenewAsync("never-reserved"));
        var budget = (await w.Budgets.GetAsync("c1"))!;
        Assert.Equal(4_000, budget.CommittedMicro);
        Assert.Equal(0, budget.ReservedMicro);
        await w.AssertConservedAsync();
    }

    /// <summary>The invoke path stores its idempotent response in the finalize commit: both land, or (on a fault) neither.</summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task A_side_write_commits_with_the_finalize_and_rolls_back_with_it(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 1_000, creditMicro: 1_000_000_000);
        foreach (var id in new[] { "ok", "faulty" })
        {
            Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", id, 5_000)).Status);
            Assert.Equal(Arrakis.Freeside.Idempotency.IdempotencyState.Started, (await w.Idempotency.BeginAsync("c1", "key-" + id, "hash", id)).State);
        }

        Task<string> KeyStateAsync(string id) =>
            w.ScalarAsync<string>("SELECT state FROM idempotency_keys WHERE scope = 'c1' AND idem_key = @key", new { key = "key-" + id });

        w.Ledger.FaultPoint = "finalize.after-claim";
        await Assert.ThrowsAnyAsync<Exception>(() => w.Ledger.FinalizeAsync("faulty", 4_000, new UsageRecord(),
            w.Idempotency.Completion("c1", "key-faulty", "faulty", 200, "{}", "application/json")));
        w.Ledger.FaultPoint = null;
        Assert.Equal("pending", (await w.Ledger.FindReservationAsync("faulty"))!.Status);
        Assert.Equal("in_progress", await KeyStateAsync("faulty"));

        var done = await w.Ledger.FinalizeAsync("ok", 4_000, new UsageRecord(), w.Idempotency.Completion("c1", "key-ok", "ok", 200, "{\"n\":1}", "application/json"));
        Assert.Equal(FinalizeStatus.Finalized, done.Status);
        Assert.Equal("complete", await KeyStateAsync("ok"));
        Assert.Equal(IdempotencyReplay("{\"n\":1}"), await w.Idempotency.BeginAsync("c1", "key-ok", "hash", "ok-retry"));

        // A posting that does not happen (here: already posted) still stores the response it was given.
        Assert.Equal(FinalizeStatus.Duplicate, (await w.Ledger.FinalizeAsync("ok", 4_000, new UsageRecord(),
            w.Idempotency.Completion("c1", "key-faulty", "faulty", 200, "{}", "application/json"))).Status);
        Assert.Equal("complete", await KeyStateAsync("faulty"));
        Assert.Equal(4_000, (await w.Budgets.GetAsync("c1"))!.CommittedMicro);
        await w.AssertConservedAsync();
    }

    /// <summary>
    /// The invoke path claims its idempotency key with the reservation: one transaction on SQLite, one function call on
    /// PostgreSQL. The claim commits exactly when the reservation does.
    /// </summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task A_key_claimed_with_a_reservation_commits_with_it_and_only_with_it(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 1, creditMicro: 1_000_000_000); // a budget of 10,000 micro-USD
        static LedgerKeyClaim Claim(string key) => new("c1", key, "hash");
        Task<string> StateAsync(string key) => w.ScalarAsync<string>("SELECT COALESCE((SELECT state FROM idempotency_keys WHERE scope = 'c1' AND idem_key = @key), 'none')", new { key });

        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "r1", 6_000, null, Claim("k1"))).Status);
        Assert.Equal("in_progress", await StateAsync("k1"));

        var again = await w.Ledger.ReserveAsync("c1", "r2", 1_000, null, Claim("k1")); // the same key: nothing is reserved
        Assert.Equal(ReserveStatus.KeyTaken, again.Status);
        Assert.Null(await w.Ledger.FindReservationAsync("r2"));

        var refused = await w.Ledger.ReserveAsync("c1", "r3", 6_000, null, Claim("k3")); // over the budget: the claim goes back too
        Assert.Equal(ReserveStatus.BudgetExceeded, refused.Status);
        Assert.Equal((4_000L, 999_994_000L), (refused.BudgetRemainingMicro, refused.WalletAvailableMicro));
        Assert.Equal("none", await StateAsync("k3"));

        // Every other outcome that reserves nothing takes its claim back as well.
        var duplicate = await w.Ledger.ReserveAsync("c1", "r1", 1_000, null, Claim("k5")); // a reservation id already used
        Assert.Equal((ReserveStatus.Duplicate, 6_000L), (duplicate.Status, duplicate.AmountMicro));
        Assert.Equal("none", await StateAsync("k5"));
        Assert.Equal(ReserveStatus.CommunityNotFound, (await w.Ledger.ReserveAsync("nobody", "r6", 1_000, null, Claim("k6"))).Status);
        Assert.Equal("none", await StateAsync("k6"));
        await w.CommunityAsync("poor", budgetCents: 100, creditMicro: 500);
        var poor = await w.Ledger.ReserveAsync("poor", "r7", 1_000, null, Claim("k7"));
        Assert.Equal((ReserveStatus.WalletInsufficient, 500L), (poor.Status, poor.WalletAvailableMicro));
        Assert.Equal("none", await StateAsync("k7"));
        Assert.Null(await w.Ledger.FindReservationAsync("r7"));
        Assert.Equal(0, (await w.Budgets.GetAsync("poor"))!.ReservedMicro);

        w.Ledger.FaultPoint = "reserve.after-wallet"; // a failure mid-way rolls back the claim with the reservation
        await Assert.ThrowsAnyAsync<Exception>(() => w.Ledger.ReserveAsync("c1", "r4", 1_000, null, Claim("k4")));
        w.Ledger.FaultPoint = null;
        Assert.Equal("none", await StateAsync("k4"));
        Assert.Null(await w.Ledger.FindReservationAsync("r4"));

        Assert.Equal(6_000, (await w.Budgets.GetAsync("c1"))!.ReservedMicro);
        await w.AssertConservedAsync();
    }

    /// <summary>
    /// On PostgreSQL one process runs at most <see cref="LedgerOptions.MaxConcurrentWrites"/> ledger calls at once (the
    /// rest queue in the process), so a burst on one community does not line up every backend for the same rows. Seen
    /// from the database: its active ledger calls are sampled while the burst runs.
    /// </summary>
    [Theory]
    [InlineData(2, true)]
    [InlineData(64, false)]
    public async Task On_postgres_a_burst_runs_at_most_the_configured_ledger_calls_at_once(int limit, bool bounded)
    {
        TestStorage.RequirePostgres();
        // Other tests call the ledger functions at the same time; only this test's connections carry this name.
        var app = "ledger-bound-" + Guid.NewGuid().ToString("N")[..12];
        var options = TestStorage.Options("postgres", "freeside");
        await using var w = await LedgerWorld.CreateAsync("postgres", options with { ConnectionString = options.ConnectionString + ";Application Name=" + app });
        var ledger = new Freeside.Ledger.Ledger(w.Db, w.Time, new LedgerOptions { MaxConcurrentWrites = limit }, w.Metrics);
        const int K = 40;
        await w.CommunityAsync("hot", budgetCents: K, creditMicro: 1_000_000_000);
        var most = 0L;
        using var stop = new CancellationTokenSource();
        var sampler = Task.Run(async () =>
        {
            await using var c = await w.Db.OpenAsync(stop.Token);
            while (!stop.IsCancellationRequested)
            {
                var active = await Dapper.SqlMapper.ExecuteScalarAsync<long>(c,
                    "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND application_name = @app AND state = 'active' AND query LIKE '%FROM ledger_reserve(%'",
                    new { app });
                most = Math.Max(most, active);
            }
        });

        var results = await Task.WhenAll(Enumerable.Range(0, 256).Select(i => Task.Run(() => ledger.ReserveAsync("hot", $"b-{limit}-{i}", 10_000))));
        await stop.CancelAsync();
        await sampler.ContinueWith(_ => { });

        Assert.Equal(K, results.Count(r => r.Status == ReserveStatus.Reserved)); // the bound changes speed, never the outcome
        Assert.True(most >= 1, "the sampler never saw a ledger call running");
        if (bounded)
        {
            Assert.True(most <= limit, $"{most} ledger calls ran at once; the bound is {limit}");
        }
        else
        {
            Assert.True(most > 2, $"without a tight bound more than two calls should overlap, but at most {most} did"); // the sampler can see overlap
        }

        await w.AssertConservedAsync();
    }

    static Arrakis.Freeside.Idempotency.IdempotencyBegin IdempotencyReplay(string body) =>
        new(Arrakis.Freeside.Idempotency.IdempotencyState.Replay, 200, body, "application/json");

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Burst_of_256_concurrent_reserves_admits_exactly_k(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        const int K = 37;
        await w.CommunityAsync("hot", budgetCents: K, creditMicro: 1_000_000_000); // budget admits exactly K reserves of one cent
        var results = await Task.WhenAll(Enumerable.Range(0, 256).Select(i => Task.Run(() => w.Ledger.ReserveAsync("hot", $"burst-{i}", 10_000))));
        Assert.Equal(K, results.Count(r => r.Status == ReserveStatus.Reserved));
        Assert.Equal(256 - K, results.Count(r => r.Status == ReserveStatus.BudgetExceeded));
        Assert.Equal(K * 10_000L, (await w.Budgets.GetAsync("hot"))!.ReservedMicro);
        await w.AssertConservedAsync();
    }

    /// <summary>
    /// Every finalize updates the community's credit lot, budget month and two accounts. On PostgreSQL those updates
    /// must be HOT (no indexed column changes), or each call leaves a row version behind in the lot's page and its index
    /// that the next calls read through until a vacuum. The calls run in one transaction, so the transaction's own
    /// counters (pg_stat_get_xact_*) say exactly what these calls did, whatever other tests run at the same time.
    /// </summary>
    [Fact]
    public async Task On_postgres_a_finalize_updates_its_lot_budget_and_accounts_in_place()
    {
        TestStorage.RequirePostgres();
        await using var w = await LedgerWorld.CreateAsync("postgres");
        await w.CommunityAsync("c1", budgetCents: 100, creditMicro: 2_000_000);
        await using var c = await w.Db.OpenAsync();
        await using var tx = await c.BeginTransactionAsync();
        // The counters also hold this backend's earlier transactions until it reports them, so the test takes the difference.
        async Task<Dictionary<string, (long Updated, long Hot)>> CountsAsync() =>
            (await Dapper.SqlMapper.QueryAsync<(string Table, long Updated, long Hot)>(c,
                """
                SELECT relname, pg_stat_get_xact_tuples_updated(oid), pg_stat_get_xact_tuples_hot_updated(oid) FROM pg_class
                WHERE relnamespace = current_schema()::regnamespace AND relname IN ('credit_lots', 'budget_months', 'ledger_accounts')
                """, transaction: tx)).ToDictionary(r => r.Table, r => (r.Updated, r.Hot));
        var before = await CountsAsync();
        const int Calls = 5;
        for (var i = 0; i < Calls; i++)
        {
            var args = new { id = $"hot-{i}", at = LedgerWorld.Start.ToUnixTimeMilliseconds() };
            Assert.Equal("reserved", await Dapper.SqlMapper.ExecuteScalarAsync<string>(c,
                "SELECT o_status FROM ledger_reserve(@id, 'c1', '2026-01', 10000, @at, @at + 60000, NULL)", args, tx));
            Assert.Equal("finalized", await Dapper.SqlMapper.ExecuteScalarAsync<string>(c,
                "SELECT o_status FROM ledger_finalize(@id, 7000, @at, NULL, 'cheap', 'm', 1, 2, NULL, NULL, NULL)", args, tx));
        }

        var after = await CountsAsync();
        (long Updated, long Hot) Delta(string table) => (after[table].Updated - before[table].Updated, after[table].Hot - before[table].Hot);
        Assert.Equal((Calls, Calls), Delta("credit_lots")); // the finalize debits the one lot
        Assert.Equal((Calls * 2, Calls * 2), Delta("budget_months")); // reserve and finalize
        Assert.Equal((Calls * 4, Calls * 4), Delta("ledger_accounts")); // wallet and spend, at reserve and at finalize
        await tx.CommitAsync();
        await w.AssertConservedAsync();
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Audit_flags_an_idempotency_key_charged_twice_within_retention_but_not_a_key_reused_after_it(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 100, creditMicro: 1_000_000);
        await w.Ledger.ReserveAsync("c1", "r1", 50_000);
        await w.Ledger.FinalizeAsync("r1", 40_000, new UsageRecord("agent-1", "cheap", "m1", 1, 2, "t1", "key-1"));
        await w.AssertConservedAsync();

        // A second charge for the same key an hour later (what a retry that took over a live key used to do).
        w.Time.Advance(TimeSpan.FromHours(1));
        await w.Ledger.ReserveAsync("c1", "r2", 50_000);
        await w.Ledger.FinalizeAsync("r2", 30_000, new UsageRecord("agent-1", "cheap", "m1", 1, 2, "t2", "key-1"));
        var c4 = (await w.Audit.RunAsync()).Communities.Single().Checks.Single(c => c.Invariant == "C4");
        Assert.False(c4.Passed);
        Assert.Equal(["idempotency key 'key-1' charged 2 times"], c4.Violations);

        // Past retention the key is free again: a third use two days later is a new request, not a second charge of the
        // first, but the pair within retention stays flagged.
        await w.ExecuteAsync("DELETE FROM usage_records WHERE id = 'r2'");
        await w.ExecuteAsync("UPDATE usage_records SET idempotency_key = 'key-2' WHERE id = 'r1'");
        await w.ExecuteAsync("INSERT INTO usage_records (id, community_id, month, cost_micro, idempotency_key, created_at) SELECT 'r2', community_id, month, 30000, 'key-2', created_at + @later FROM usage_records WHERE id = 'r1'",
            new { later = (long)TimeSpan.FromDays(2).TotalMilliseconds });
        var reused = (await w.Audit.RunAsync()).Communities.Single().Checks.Single(c => c.Invariant == "C4");
        Assert.True(reused.Passed, string.Join("; ", reused.Violations));
    }

    /// <summary>
    /// A refusal reports what the budget and the wallet could cover before it (the 402's <c>budgetRemainingMicro</c>). A
    /// reserve that the budget admitted and the wallet refused reported the budget less its own refused amount, which was
    /// never reserved: 60,000 refused on a fresh 100,000 budget said 40,000 left.
    /// </summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task A_reserve_the_wallet_refuses_reports_the_budget_left_before_it(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 100, creditMicro: 50_000);

        var first = await w.Ledger.ReserveAsync("c1", "wide", 60_000); // also the month's first reserve
        Assert.Equal((ReserveStatus.WalletInsufficient, 1_000_000L, 50_000L), (first.Status, first.BudgetRemainingMicro, first.WalletAvailableMicro));
        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "ok", 10_000)).Status);
        var again = await w.Ledger.ReserveAsync("c1", "wide-2", 60_000);
        Assert.Equal((ReserveStatus.WalletInsufficient, 990_000L, 40_000L), (again.Status, again.BudgetRemainingMicro, again.WalletAvailableMicro));
        var budget = await w.Budgets.GetAsync("c1");
        Assert.Equal(again.BudgetRemainingMicro, budget!.AvailableMicro);
        await w.AssertConservedAsync();
    }

    /// <summary>
    /// A refusal by the budget reports the credit a reserve could hold, as a refusal by the wallet and the budget view do:
    /// not credit that expired and that the lot reaper has not moved out yet. The budget refusal read the wallet before
    /// the reserve expired anything, so its 402 said 130,000 micro-USD were available where a reserve could hold 30,000.
    /// </summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task A_reserve_the_budget_refuses_reports_the_credit_a_reserve_could_hold(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 10);
        await w.Ledger.GrantAsync("c1", "short", 100_000, "purchase", LedgerWorld.Start.AddMinutes(30));
        await w.Ledger.GrantAsync("c1", "long", 30_000, "purchase", LedgerWorld.Start.AddDays(60));
        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "held", 60_000, TimeSpan.FromHours(2))).Status); // while "short" is valid

        w.Time.Advance(TimeSpan.FromHours(1)); // "short" expired half an hour ago; no reaper has run
        var refused = await w.Ledger.ReserveAsync("c1", "big", 40_001);
        Assert.Equal(ReserveStatus.BudgetExceeded, refused.Status);
        Assert.Equal((40_000L, 30_000L), (refused.BudgetRemainingMicro, refused.WalletAvailableMicro)); // "long" alone: the hold keeps 60,000 of "short"
        Assert.Equal(refused.WalletAvailableMicro, (await w.Budgets.GetAsync("c1"))!.CreditBalanceMicro);
        var wallet = await w.Ledger.ReserveAsync("c1", "wide", refused.WalletAvailableMicro + 1); // within the budget: the wallet decides
        Assert.Equal((ReserveStatus.WalletInsufficient, refused.WalletAvailableMicro), (wallet.Status, wallet.WalletAvailableMicro));
        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "exact", refused.WalletAvailableMicro)).Status);
        await w.AssertConservedAsync();
    }

    /// <summary>
    /// The audit's budget (the admin conservation report and the budget_*_cents gauges) is the current month's, as the
    /// budget view shows it. Before a month's first reserve there is no month row, and the audit reported a limit of 0:
    /// a new community, and every community from 00:00 UTC on the 1st until its first call, showed budget_limit_cents and
    /// budget_available_cents 0 on the dashboards while its budget endpoint showed the whole budget available.
    /// </summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task The_audit_reports_the_months_budget_as_the_budget_view_does_before_and_after_its_first_reserve(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 100, creditMicro: 2_000_000);

        async Task AgreeAsync(long limit, long committed, long reserved)
        {
            var view = (await w.Budgets.GetAsync("c1"))!;
            var audit = (await w.Audit.AuditCommunityAsync("c1")).Budget;
            Assert.Equal((limit, committed, reserved, limit - committed - reserved),
                (view.MonthlyBudgetCents * 10_000, view.CommittedMicro, view.ReservedMicro, view.AvailableMicro));
            Assert.Equal((limit, committed, reserved, limit - committed - reserved),
                (audit.LimitMicro, audit.CommittedMicro, audit.ReservedMicro, audit.AvailableMicro));
        }

        await AgreeAsync(1_000_000, 0, 0); // a new community: no month row yet
        await w.Ledger.ReserveAsync("c1", "spent", 300_000);
        await w.Ledger.FinalizeAsync("spent", 200_000, new UsageRecord());
        await w.Ledger.ReserveAsync("c1", "open", 100_000, TimeSpan.FromHours(4));
        await AgreeAsync(1_000_000, 200_000, 100_000);

        // A budget below the month's spend is refused, naming the spend and the lowest budget that fits.
        var below = await w.Communities.SetBudgetAsync("c1", 29);
        Assert.Equal(CommunityStatus.BudgetBelowUsage, below.Status);
        Assert.Contains("200000 micro-USD committed and 100000 reserved", below.Detail, StringComparison.Ordinal);
        Assert.Contains("the lowest budget that fits now is 30 cents", below.Detail, StringComparison.Ordinal);
        Assert.Equal(CommunityStatus.Updated, (await w.Communities.SetBudgetAsync("c1", 30)).Status);
        Assert.Equal(CommunityStatus.Updated, (await w.Communities.SetBudgetAsync("c1", 100)).Status);
        Assert.Equal(CommunityStatus.NotFound, (await w.Communities.SetBudgetAsync("nobody", 100)).Status);

        w.Time.Advance(TimeSpan.FromHours(2)); // 2026-02-01T00:00Z: February has no row until its first reserve
        await AgreeAsync(1_000_000, 0, 0);
        Assert.Equal(CommunityStatus.Updated, (await w.Communities.SetBudgetAsync("c1", 50)).Status);
        await AgreeAsync(500_000, 0, 0);
        await w.Ledger.FinalizeAsync("open", 70_000, new UsageRecord()); // charged to January, which admitted it
        await AgreeAsync(500_000, 0, 0);
        Assert.Equal(270_000, (await w.Usage.TotalsAsync("c1", "2026-01", UsageDimension.Pool)).Sum(t => t.CostMicro)); // and listed there
        Assert.Empty(await w.Usage.TotalsAsync("c1", "2026-02", UsageDimension.Pool));
        await w.AssertConservedAsync();
    }

    /// <summary>
    /// Each balance agreed with its own records, yet the books could disagree with each other: a wallet charged 50,000 for
    /// a call whose reservation, usage record and budget say 40,000 (post transfer, accounts, lot and lot entry all at
    /// 50,000) passed every check, and so did a resolved reservation whose pending transfer had been rewritten. The audit
    /// now ties the spend account to the usage records and each reservation to its transfers.
    /// </summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Audit_flags_a_charge_that_disagrees_with_its_reservation_and_usage(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 100, creditMicro: 1_000_000);
        await w.Ledger.ReserveAsync("c1", "r1", 50_000);
        await w.Ledger.FinalizeAsync("r1", 40_000, new UsageRecord());
        await w.AssertConservedAsync();

        // The wallet pays 10,000 more than the call was charged, consistently in every ledger row.
        await w.ExecuteAsync("UPDATE ledger_transfers SET amount_micro = amount_micro + 10000 WHERE id = 'p:r1'");
        await w.ExecuteAsync("UPDATE lot_entries SET amount_micro = amount_micro + 10000 WHERE transfer_id = 'p:r1'");
        await w.ExecuteAsync("UPDATE credit_lots SET remaining_micro = remaining_micro - 10000");
        await w.ExecuteAsync("UPDATE ledger_accounts SET debits_posted = debits_posted + 10000 WHERE id = 'c1:wallet'");
        await w.ExecuteAsync("UPDATE ledger_accounts SET credits_posted = credits_posted + 10000 WHERE id = 'c1:spend'");
        var charged = (await w.Audit.RunAsync()).Communities.Single().Checks.Where(c => !c.Passed).ToList();
        Assert.Contains(charged, c => c.Invariant == "C5" && c.Violations.Contains("spend account posted 50000 != usage records 40000"));
        Assert.Contains(charged, c => c.Invariant == "C4" && c.Violations.Contains("reservation r1 (posted, 50000, actual 40000): post transfer 50000"));

        await w.ExecuteAsync("UPDATE ledger_transfers SET amount_micro = amount_micro - 10000 WHERE id = 'p:r1'");
        await w.ExecuteAsync("UPDATE lot_entries SET amount_micro = amount_micro - 10000 WHERE transfer_id = 'p:r1'");
        await w.ExecuteAsync("UPDATE credit_lots SET remaining_micro = remaining_micro + 10000");
        await w.ExecuteAsync("UPDATE ledger_accounts SET debits_posted = debits_posted - 10000 WHERE id = 'c1:wallet'");
        await w.ExecuteAsync("UPDATE ledger_accounts SET credits_posted = credits_posted - 10000 WHERE id = 'c1:spend'");
        await w.AssertConservedAsync();

        // A resolved reservation's pending transfer rewritten: it no longer counts in any balance, but the record is wrong.
        await w.ExecuteAsync("UPDATE ledger_transfers SET amount_micro = 1 WHERE id = 'r:r1'");
        var c4 = (await w.Audit.RunAsync()).Communities.Single().Checks.Single(c => c.Invariant == "C4");
        Assert.Equal(["reservation r1 (posted, 50000, actual 40000): pending transfer 1"], c4.Violations);
    }

    /// <summary>
    /// C4's third clause: a payment mints at most one credit note. Every x402 lot must be the note of one settled payment
    /// of its community, for the amount that payment credited, and no two payments may name one lot. The audit did not
    /// look at payments at all.
    /// </summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Audit_ties_every_x402_lot_to_one_settled_payment(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 100, creditMicro: 1_000_000);
        Task<int> PaymentAsync(string id, string nonce, string lot, long credit) => w.ExecuteAsync(
            """
            INSERT INTO x402_payments (id, kind, x402_version, network, asset, payer, nonce, payload_hash, payload_json, requirement_json,
                amount_required_micro, value_micro, community_id, state, cost_micro, credit_note_id, credit_lot_id, credit_micro, credit_granted, created_at, updated_at)
            VALUES (@id, 'exact', 2, 'eip155:84532', '0xasset', '0xpayer', @nonce, 'h', '{}', '{}', 10000, 10000, 'c1', 'settled', 10000 - @credit, 'cn_' || @id,
                @lot, @credit, 1, 0, 0)
            """, new { id, nonce, lot, credit });
        Assert.Equal(1, await PaymentAsync("pay1", "n1", "x402:pay1", 5_000));
        Assert.Equal(GrantStatus.Granted, (await w.Ledger.GrantAsync("c1", "x402:pay1", 5_000, "x402")).Status);
        await w.AssertConservedAsync();

        Assert.Equal(GrantStatus.Granted, (await w.Ledger.GrantAsync("c1", "x402:pay2", 7_000, "x402")).Status); // no payment behind it
        Assert.Equal(1, await PaymentAsync("pay3", "n3", "x402:pay1", 5_000)); // a second payment naming the first one's lot
        var c4 = (await w.Audit.RunAsync()).Communities.Single().Checks.Single(c => c.Invariant == "C4");
        Assert.Equal(
            ["x402 credit lot x402:pay2 is not the credit note of one settled payment for its amount", "x402 credit lot x402:pay1 is named by 2 payments"],
            c4.Violations);

        await w.ExecuteAsync("DELETE FROM x402_payments WHERE id = 'pay3'");
        await w.ExecuteAsync("UPDATE x402_payments SET credit_micro = 4000 WHERE id = 'pay1'"); // the note says less than the lot holds
        c4 = (await w.Audit.RunAsync()).Communities.Single().Checks.Single(c => c.Invariant == "C4");
        Assert.Equal(
            ["x402 credit lot x402:pay1 is not the credit note of one settled payment for its amount", "x402 credit lot x402:pay2 is not the credit note of one settled payment for its amount"],
            c4.Violations);
    }

    [Fact]
    public async Task Audit_flags_a_row_corrupted_directly_in_the_database()
    {
        await using var w = await LedgerWorld.CreateAsync("sqlite");
        await w.CommunityAsync("c1", budgetCents: 100, creditMicro: 1_000_000);
        await w.Ledger.ReserveAsync("c1", "r1", 50_000);
        await w.Ledger.FinalizeAsync("r1", 40_000, new UsageRecord());
        await w.AssertConservedAsync();

        await w.ExecuteAsync("UPDATE budget_months SET committed_micro = committed_micro + 1");
        var report = await w.Audit.RunAsync();
        Assert.False(report.Passed);
        Assert.Contains(report.Communities.Single().Checks, c => c is { Invariant: "C5", Passed: false });

        await w.ExecuteAsync("UPDATE budget_months SET committed_micro = committed_micro - 1");
        await w.ExecuteAsync("UPDATE credit_lots SET remaining_micro = remaining_micro + 5");
        var lot = await w.Audit.RunAsync();
        Assert.Contains(lot.Communities.Single().Checks, c => c is { Invariant: "C2", Passed: false });

        await w.ExecuteAsync("UPDATE credit_lots SET remaining_micro = remaining_micro - 5");
        await w.ExecuteAsync("UPDATE ledger_accounts SET credits_posted = credits_posted + 7 WHERE code = 'spend'");
        Assert.Contains((await w.Audit.RunAsync()).Communities.Single().Checks, c => c is { Invariant: "C3", Passed: false });
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Reserve_and_finalize_each_trace_one_activity_tagged_with_the_outcome(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 10, creditMicro: 1_000_000);
        var seen = new ConcurrentQueue<Activity>();
        using var root = new Activity("ledger-activity-test").Start(); // other tests' ledger calls carry other trace ids
        using var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == Arrakis.Freeside.Ledger.Ledger.ActivitySourceName,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = a =>
            {
                if (a.TraceId == root.TraceId)
                {
                    seen.Enqueue(a);
                }
            },
        };
        ActivitySource.AddActivityListener(listener);

        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "r1", 40_000)).Status);
        Assert.Equal(ReserveStatus.BudgetExceeded, (await w.Ledger.ReserveAsync("c1", "r2", 90_000)).Status);
        Assert.Equal(FinalizeStatus.Finalized, (await w.Ledger.FinalizeAsync("r1", 30_000, new UsageRecord())).Status);
        Assert.Equal(FinalizeStatus.Duplicate, (await w.Ledger.FinalizeAsync("r1", 30_000, new UsageRecord())).Status);

        Assert.Equal(
            [("ledger.reserve", "Reserved"), ("ledger.reserve", "BudgetExceeded"), ("ledger.finalize", "Finalized"), ("ledger.finalize", "Duplicate")],
            seen.Select(a => (a.OperationName, a.GetTagItem("ledger.status") as string)).ToArray());
        Assert.All(seen, a => Assert.Equal(root.SpanId, a.ParentSpanId));
        Assert.All(seen, a => Assert.True(a.Duration > TimeSpan.Zero));
        Assert.Same(root, Activity.Current); // each operation's activity ended with it
    }
}
