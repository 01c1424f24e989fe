using System.Diagnostics.Metrics;
using Arrakis.Freeside.Audit;
using Arrakis.Freeside.Budgets;
using Arrakis.Freeside.Communities;
using Arrakis.Freeside.Idempotency;
using Arrakis.Freeside.Ledger;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Storage;
using Arrakis.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;

namespace Arrakis.Freeside.Tests.Ledger;

/// <summary>A migrated freeside database on one engine with the ledger's pieces wired to a fake clock.</summary>
internal sealed class LedgerWorld : IAsyncDisposable
{
    LedgerWorld(Database db, FakeTimeProvider time)
    {
        Db = db;
        Time = time;
        var meters = new ServiceCollection().AddMetrics().BuildServiceProvider().GetRequiredService<IMeterFactory>();
        Metrics = new LedgerMetrics(meters);
        Ledger = new Freeside.Ledger.Ledger(db, time, new LedgerOptions(), Metrics);
        Communities = new CommunityStore(db, time);
        Audit = new ConservationAudit(db, time, new AuditMetrics(meters), NullLogger<ConservationAudit>.Instance);
        Budgets = new BudgetStore(db, time);
        Usage = new UsageStore(db);
        Idempotency = new IdempotencyStore(db, time, new IdempotencyOptions());
    }

    public Database Db { get; }

    public FakeTimeProvider Time { get; }

    public Freeside.Ledger.Ledger Ledger { get; }

    public LedgerMetrics Metrics { get; }

    public CommunityStore Communities { get; }

    public ConservationAudit Audit { get; }

    public BudgetStore Budgets { get; }

    public UsageStore Usage { get; }

    public IdempotencyStore Idempotency { get; }

    public static DateTimeOffset Start => new(2026, 1, 31, 22, 0, 0, TimeSpan.Zero);

    public static async Task<LedgerWorld> CreateAsync(string engine, StorageOptions? options = null)
    {
        var db = new Database(options ?? TestStorage.Options(engine, "freeside"));
        await MigrateAsync(db);
        return new LedgerWorld(db, new FakeTimeProvider(Start));
    }

    public static async Task MigrateAsync(Database db) =>
        await new Migrator(db).ApplyAsync(Migrator.FromAssembly(typeof(Database).Assembly, db.Engine)
            .Concat(Migrator.FromAssembly(typeof(FreesideService).Assembly, db.Engine)));

    /// <summary>Creates a community with a budget and (optionally) one credit lot.</summary>
    public async Task CommunityAsync(string id, long budgetCents, long creditMicro = 0)
    {
        Assert.Equal(CommunityStatus.Created, (await Communities.UpsertAsync(id, id, Tier.Free, budgetCents)).Status);
        if (creditMicro > 0)
        {
            Assert.Equal(GrantStatus.Granted, (await Ledger.GrantAsync(id, id + "-lot-0", creditMicro, "grant")).Status);
        }
    }

    public async Task AssertConservedAsync(string? context = null)
    {
        var report = await Audit.RunAsync();
        var broken = report.Communities.SelectMany(c => c.Checks.Where(x => !x.Passed).Select(x => $"{c.CommunityId} {x.Invariant}: {string.Join("; ", x.Violations)}")).ToList();
        Assert.True(broken.Count == 0, (context ?? "") + string.Join("\n", broken));
    }

    public async Task<T> ScalarAsync<T>(string sql, object? args = null)
    {
        await using var c = await Db.OpenAsync();
        return await Dapper.SqlMapper.ExecuteScalarAsync<T>(c, sql, args) ?? throw new InvalidOperationException("null scalar");
    }

    public async Task<int> ExecuteAsync(string sql, object? args = null)
    {
        await using var c = await Db.OpenAsync();
        return await Dapper.SqlMapper.ExecuteAsync(c, sql, args);
    }

    public ValueTask DisposeAsync() => Db.DisposeAsync();
}
