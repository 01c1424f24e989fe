using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Arrakis.Freeside.Audit;
using Arrakis.Freeside.Communities;
using Arrakis.Freeside.Ledger;
using Arrakis.Shared.Storage;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;

namespace Arrakis.Freeside.Tests.Ledger;

/// <summary>
/// Two ledgers (two <see cref="Database"/> instances, as two replicas have) on one database hammer one community with every
/// operation at once: reserve, finalize, release, renew, the reaper's expiries, grants of expiring lots, lot expiry and
/// budget changes, while audits run beside them. Every audit taken mid-flight must pass (it reads one snapshot), and so
/// must the last.
/// </summary>
public sealed class ConcurrentLedgersTests
{
    public static TheoryData<string> Engines => TestStorage.Engines();

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Two_ledgers_on_one_database_keep_C1_to_C5_under_a_mixed_burst_audited_as_they_write(string engine)
    {
        var options = TestStorage.Options(engine, "freeside");
        await using var w = await LedgerWorld.CreateAsync(engine, options);
        await using var replica = new Database(options);
        var meters = new ServiceCollection().AddMetrics().BuildServiceProvider().GetRequiredService<IMeterFactory>();
        var ledgers = new[] { w.Ledger, new Freeside.Ledger.Ledger(replica, w.Time, new LedgerOptions(), new LedgerMetrics(meters)) };
        var stores = new[] { w.Communities, new CommunityStore(replica, w.Time) };
        var audits = new[] { w.Audit, new ConservationAudit(replica, w.Time, new AuditMetrics(meters), NullLogger<ConservationAudit>.Instance) };
        await w.CommunityAsync("h", budgetCents: 2_000, creditMicro: 3_000_000);
        var open = new ConcurrentDictionary<string, long>();
        var failures = new ConcurrentQueue<string>();
        var next = 0;
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(4));

        async Task WorkAsync(int worker)
        {
            var rng = new Random(worker);
            var ledger = ledgers[worker % 2];
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    var roll = rng.Next(100);
                    var pending = open.Keys.ToArray();
                    var any = pending.Length > 0 ? pending[rng.Next(pending.Length)] : null;
                    switch (roll)
                    {
                        case < 35:
                            var id = $"r{Interlocked.Increment(ref next)}";
                            var amount = rng.Next(1, 40_000);
                            if ((await ledger.ReserveAsync("h", id, amount, TimeSpan.FromSeconds(rng.Next(1, 20)))).Status == ReserveStatus.Reserved)
                            {
                                open[id] = amount;
                            }

                            break;
                        case < 55 when any is not null && open.TryRemove(any, out var held):
                            await ledger.FinalizeAsync(any, rng.NextInt64(0, held + 1), new UsageRecord("a", "cheap", "m", 1, 1, null, "k-" + any));
                            break;
                        case < 62 when any is not null:
                            await ledger.ReleaseAsync(any);
                            break;
                        case < 67 when any is not null:
                            await ledger.RenewAsync(any, TimeSpan.FromSeconds(rng.Next(1, 10)));
                            break;
                        case < 75:
                            w.Time.Advance(TimeSpan.FromSeconds(rng.Next(0, 3)));
                            await ledger.ExpireDueAsync();
                            break;
                        case < 82:
                            await ledger.ExpireLotsAsync();
                            break;
                        case < 90:
                            DateTimeOffset? expires = rng.Next(2) == 0 ? w.Time.GetUtcNow().AddSeconds(rng.Next(1, 30)) : null;
                            await ledger.GrantAsync("h", $"lot{Interlocked.Increment(ref next)}", rng.Next(1, 100_000), "grant", expires);
                            break;
                        case < 95:
                            await stores[worker % 2].SetBudgetAsync("h", rng.Next(100, 3_000));
                            break;
                        default:
                            var audit = await audits[worker % 2].AuditCommunityAsync("h");
                            if (!audit.Passed)
                            {
                                failures.Enqueue(string.Join(" | ", audit.Checks.Where(x => !x.Passed).Select(x => x.Invariant + ": " + string.Join("; ", x.Violations))));
                            }

                            break;
                    }
                }
                catch (Exception ex)
                {
                    failures.Enqueue(ex.GetType().Name + ": " + ex.Message);
                }
            }
        }

        await Task.WhenAll(Enumerable.Range(0, 8).Select(i => Task.Run(() => WorkAsync(i))));

        Assert.True(failures.IsEmpty, string.Join("\n", failures.Distinct().Take(10)));
        Assert.True(await w.ScalarAsync<long>("SELECT COUNT(*) FROM reservations WHERE status = 'posted'") > 0);
        await w.AssertConservedAsync();
    }
}
