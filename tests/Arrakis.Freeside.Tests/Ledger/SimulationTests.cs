using Arrakis.Freeside.Idempotency;
using Arrakis.Freeside.Ledger;

namespace Arrakis.Freeside.Tests.Ledger;

/// <summary>
/// Seeded simulation: many logical clients interleave every ledger operation, with injected crashes and mid-transaction
/// DB errors, and C1–C5 are audited after every step. Seeds and op counts come from ARRAKIS_SIM_SEEDS / ARRAKIS_SIM_OPS.
/// </summary>
public sealed class SimulationTests
{
    public static TheoryData<string> Engines => TestStorage.Engines();

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Conservation_holds_after_every_step_of_seeded_simulations(string engine)
    {
        var seeds = int.TryParse(Environment.GetEnvironmentVariable("ARRAKIS_SIM_SEEDS"), out var s) ? s : engine == "sqlite" ? 20 : 4;
        var ops = int.TryParse(Environment.GetEnvironmentVariable("ARRAKIS_SIM_OPS"), out var o) ? o : engine == "sqlite" ? 100_000 : 4_000;
        var perSeed = Math.Max(1, ops / seeds);
        var baseSeed = int.TryParse(Environment.GetEnvironmentVariable("ARRAKIS_SIM_BASE_SEED"), out var b) ? b : 1;
        // Seeds are independent worlds (one database each), so they run side by side.
        await Parallel.ForEachAsync(Enumerable.Range(baseSeed, seeds), new ParallelOptions { MaxDegreeOfParallelism = Math.Max(2, Environment.ProcessorCount) }, async (seed, _) =>
        {
            try
            {
                await RunAsync(engine, seed, perSeed);
            }
            catch (Exception ex)
            {
                throw new Xunit.Sdk.XunitException($"Simulation failed on {engine} with seed {seed} (rerun: ARRAKIS_SIM_BASE_SEED={seed} ARRAKIS_SIM_SEEDS=1 ARRAKIS_SIM_OPS={perSeed}): {ex.Message}\n{ex.StackTrace}");
            }
        });
    }

    sealed record Open(string Id, string Community, long Amount);

    static async Task RunAsync(string engine, int seed, int ops)
    {
        var rng = new Random(seed);
        await using var w = await LedgerWorld.CreateAsync(engine);
        var communities = new[] { "sim-a", "sim-b", "sim-c", "sim-d" };
        foreach (var c in communities)
        {
            await w.CommunityAsync(c, budgetCents: rng.Next(50, 400), creditMicro: rng.Next(500_000, 5_000_000));
        }

        var open = new List<Open>();
        var resolved = new List<string>();
        var lots = new List<(string Id, string Community, long Amount, string Source)>();
        var keys = new Dictionary<string, (string Hash, bool Complete, DateTimeOffset Created, DateTimeOffset Updated)>();
        var next = 0;

        for (var step = 0; step < ops; step++)
        {
            var community = communities[rng.Next(communities.Length)];
            var roll = rng.Next(100);
            var op = "";
            switch (roll)
            {
                case < 28:
                    {
                        op = "reserve";
                        var id = $"s{seed}-r{next++}";
                        var amount = rng.Next(10) == 0 ? rng.Next(100_000, 2_000_000) : rng.Next(1, 30_000);
                        var before = await w.Budgets.GetAsync(community);
                        var r = await w.Ledger.ReserveAsync(community, id, amount, TimeSpan.FromSeconds(rng.Next(1, 600)));
                        var fitsBudget = before!.CommittedMicro + before.ReservedMicro + amount <= before.MonthlyBudgetCents * 10_000L;
                        var fitsWallet = before.CreditBalanceMicro >= amount;
                        var expected = !fitsBudget ? ReserveStatus.BudgetExceeded : !fitsWallet ? ReserveStatus.WalletInsufficient : ReserveStatus.Reserved;
                        Assert.True(expected == r.Status, $"step {step}: reserve {amount} expected {expected} got {r.Status}");
                        if (r.Status != ReserveStatus.Reserved)
                        {
                            // A 402 says what the budget view said: the budget left and the credit a reserve could hold.
                            Assert.True((before.AvailableMicro, before.CreditBalanceMicro) == (r.BudgetRemainingMicro, r.WalletAvailableMicro),
                                $"step {step}: refused {amount} with ({r.BudgetRemainingMicro}, {r.WalletAvailableMicro}), the view said ({before.AvailableMicro}, {before.CreditBalanceMicro})");
                        }

                        if (r.Status == ReserveStatus.Reserved)
                        {
                            open.Add(new Open(id, community, amount));
                        }

                        break;
                    }

                case < 46 when open.Count > 0:
                    {
                        op = "finalize";
                        var pick = open[rng.Next(open.Count)];
                        var actual = rng.Next(4) == 0 ? pick.Amount : rng.NextInt64(0, pick.Amount + 1);
                        var f = await w.Ledger.FinalizeAsync(pick.Id, actual, new UsageRecord("agent-" + rng.Next(3), "cheap", "m", 1, 2, "t-" + pick.Id, null));
                        Assert.Contains(f.Status, new[] { FinalizeStatus.Finalized, FinalizeStatus.Expired });
                        open.Remove(pick);
                        resolved.Add(pick.Id);
                        community = pick.Community;
                        break;
                    }

                case < 52 when resolved.Count > 0:
                    {
                        op = "duplicate-finalize";
                        var id = resolved[rng.Next(resolved.Count)];
                        var state = await w.Ledger.FindReservationAsync(id);
                        var f = await w.Ledger.FinalizeAsync(id, 1, new UsageRecord());
                        Assert.NotEqual(FinalizeStatus.Finalized, f.Status);
                        Assert.Equal(state, await w.Ledger.FindReservationAsync(id));
                        community = state!.CommunityId;
                        break;
                    }

                case < 60 when open.Count > 0:
                    {
                        op = "release";
                        var pick = open[rng.Next(open.Count)];
                        var r = await w.Ledger.ReleaseAsync(pick.Id);
                        Assert.Contains(r.Status, new[] { ReleaseStatus.Released, ReleaseStatus.Expired });
                        open.Remove(pick);
                        resolved.Add(pick.Id);
                        community = pick.Community;
                        break;
                    }

                case < 67:
                    {
                        op = "expire";
                        w.Time.Advance(TimeSpan.FromSeconds(rng.Next(0, 400)));
                        await w.Ledger.ExpireDueAsync();
                        await w.Ledger.ExpireLotsAsync();
                        foreach (var gone in open.Where(x => x.Id is not null).ToList())
                        {
                            if ((await w.Ledger.FindReservationAsync(gone.Id))!.Status == "expired")
                            {
                                open.Remove(gone);
                                resolved.Add(gone.Id);
                            }
                        }

                        community = "*";
                        break;
                    }

                case < 73:
                    {
                        op = "grant";
                        if (lots.Count > 0 && rng.Next(3) == 0)
                        {
                            var lot = lots[rng.Next(lots.Count)];
                            Assert.Equal(GrantStatus.Duplicate, (await w.Ledger.GrantAsync(lot.Community, lot.Id, lot.Amount, lot.Source)).Status);
                            community = lot.Community;
                        }
                        else
                        {
                            var id = $"s{seed}-lot{next++}";
                            var amount = rng.Next(1, 2_000_000);
                            var source = CreditSources.All.ElementAt(rng.Next(CreditSources.All.Count));
                            DateTimeOffset? expires = rng.Next(3) == 0 ? w.Time.GetUtcNow().AddSeconds(rng.Next(1, 3_000)) : null;
                            Assert.Equal(GrantStatus.Granted, (await w.Ledger.GrantAsync(community, id, amount, source, expires)).Status);
                            lots.Add((id, community, amount, source));
                        }

                        break;
                    }

                case < 74:
                    {
                        op = "month-rollover";
                        var now = w.Time.GetUtcNow();
                        var first = new DateTimeOffset(now.Year, now.Month, 1, 0, 0, 0, TimeSpan.Zero).AddMonths(1);
                        w.Time.Advance(first - now);
                        community = "*";
                        break;
                    }

                case < 79 when open.Count > 0:
                    {
                        op = "duplicate-reserve";
                        var pick = open[rng.Next(open.Count)];
                        Assert.Equal(ReserveStatus.Duplicate, (await w.Ledger.ReserveAsync(pick.Community, pick.Id, pick.Amount)).Status);
                        community = pick.Community;
                        break;
                    }

                case < 84:
                    {
                        op = "crash-after-reserve";
                        // The client reserves, then dies before finalizing: only the reaper can resolve it.
                        var id = $"s{seed}-crash{next++}";
                        var r = await w.Ledger.ReserveAsync(community, id, rng.Next(1, 5_000), TimeSpan.FromSeconds(rng.Next(1, 300)));
                        if (r.Status == ReserveStatus.Reserved)
                        {
                            open.Add(new Open(id, community, r.AmountMicro));
                        }

                        break;
                    }

                case < 90:
                    {
                        op = "db-fault";
                        var points = new[] { "reserve.after-insert", "reserve.after-wallet", "finalize.after-claim", "finalize.after-wallet", "release.after-claim", "grant.after-lot" };
                        var point = points[rng.Next(points.Length)];
                        // The ledger fails at that point inside its transaction (on PostgreSQL the ledger function raises there).
                        w.Ledger.FaultPoint = point;
                        try
                        {
                            var target = open.Count > 0 ? open[rng.Next(open.Count)] : null;
                            var before = target is null ? null : await w.Ledger.FindReservationAsync(target.Id);
                            Task work = point.Split('.')[0] switch
                            {
                                "finalize" when target is not null => w.Ledger.FinalizeAsync(target.Id, target.Amount, new UsageRecord()),
                                "release" when target is not null => w.Ledger.ReleaseAsync(target.Id),
                                "grant" => w.Ledger.GrantAsync(community, $"s{seed}-faultlot{next++}", 1_000, "grant"),
                                _ => w.Ledger.ReserveAsync(community, $"s{seed}-fault{next++}", 1),
                            };
                            try
                            {
                                await work;
                            }
                            catch (Exception ex) when (ex.Message.Contains("injected DB error at " + point, StringComparison.Ordinal))
                            {
                            }

                            if (target is not null && (point.StartsWith("finalize", StringComparison.Ordinal) || point.StartsWith("release", StringComparison.Ordinal)))
                            {
                                // Rolled back: the reservation is exactly as it was (pending, or resolved by nothing).
                                Assert.Equal(before, await w.Ledger.FindReservationAsync(target!.Id));
                            }
                        }
                        finally
                        {
                            w.Ledger.FaultPoint = null;
                        }

                        community = "*";
                        break;
                    }

                case < 96:
                    {
                        op = "idempotency";
                        var key = "k" + rng.Next(40);
                        var hash = "h" + rng.Next(2);
                        var owner = $"s{seed}-claim{step}"; // no reservation has this id, so a lapsed lease alone frees the key
                        var begin = await w.Idempotency.BeginAsync(community, key, hash, owner);
                        var now = w.Time.GetUtcNow();
                        var slot = community + "/" + key;
                        var known = keys.TryGetValue(slot, out var k) && k.Created > now - TimeSpan.FromHours(25) ? k : default((string Hash, bool Complete, DateTimeOffset Created, DateTimeOffset Updated)?);
                        var expected = known is not { } kn ? IdempotencyState.Started
                            : kn.Hash != hash ? IdempotencyState.KeyReused
                            : kn.Complete ? IdempotencyState.Replay
                            : kn.Updated < now - TimeSpan.FromMinutes(10) ? IdempotencyState.Started : IdempotencyState.InProgress;
                        Assert.Equal(expected, begin.State);
                        if (begin.State == IdempotencyState.Started)
                        {
                            if (rng.Next(4) == 0)
                            {
                                await w.Idempotency.AbandonAsync(community, key, owner);
                                keys.Remove(slot);
                            }
                            else
                            {
                                var complete = rng.Next(5) != 0;
                                keys[slot] = (hash, complete, known?.Created ?? now, now);
                                if (complete)
                                {
                                    await w.Idempotency.CompleteAsync(community, key, owner, 200, "{\"n\":" + step + "}", "application/json");
                                }
                            }
                        }

                        if (begin.State == IdempotencyState.Replay)
                        {
                            Assert.Equal(200, begin.Status);
                        }

                        break;
                    }

                default:
                    {
                        op = "invalid";
                        var r = await w.Ledger.ReserveAsync(community, $"s{seed}-bad{next++}", rng.Next(2) == 0 ? -rng.Next(1, 100) : long.MaxValue - rng.Next(100));
                        Assert.Equal(ReserveStatus.Invalid, r.Status);
                        break;
                    }
            }

            // C1–C5 after every step: the touched community, or all of them after global steps.
            foreach (var c in community == "*" ? communities : [community])
            {
                var audit = await w.Audit.AuditCommunityAsync(c);
                Assert.True(audit.Passed, $"step {step} ({op}) broke {c}: " +
                    string.Join(" | ", audit.Checks.Where(x => !x.Passed).Select(x => x.Invariant + ": " + string.Join("; ", x.Violations))));
                var view = (await w.Budgets.GetAsync(c))!;
                Assert.True((view.MonthlyBudgetCents * 10_000, view.CommittedMicro, view.ReservedMicro, view.AvailableMicro)
                    == (audit.Budget.LimitMicro, audit.Budget.CommittedMicro, audit.Budget.ReservedMicro, audit.Budget.AvailableMicro),
                    $"step {step} ({op}): the audit's budget of {c} {audit.Budget} differs from the budget view {view}");
            }
        }

        // Drain: the reaper resolves every crashed client, and the books still balance.
        w.Time.Advance(TimeSpan.FromHours(1));
        await w.Ledger.ExpireDueAsync();
        Assert.Equal(0, await w.ScalarAsync<long>("SELECT COUNT(*) FROM reservations WHERE status = 'pending'"));
        await w.AssertConservedAsync($"seed {seed} after drain: ");
    }
}
