using System.Diagnostics;
using System.Diagnostics.Metrics;
using Arrakis.Freeside;
using Arrakis.Freeside.Communities;
using Arrakis.Freeside.Ledger;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Storage;
using Dapper;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

// Arrakis.Bench ledger [--pg CONN] [--seconds N] [--out docs/benchmarks.md]
// Arrakis.Bench invoke [--pg CONN] [--engines sqlite,postgres] [--providers openai|local] [--clients 1,32] [--seconds N] [--warmup MIN_S] [--warmup-max MAX_S] [--only PATH] [--slow-provider-ms MS (250; 0 = none)] [--breakdown off] [--out docs/benchmarks.md]
// Arrakis.Bench burst-worker CONN COMMUNITY COUNT PREFIX   (used by the two-process burst test; prints RESERVED=n)
var mode = args.Length > 0 ? args[0] : "ledger";
string? Arg(string name) => Array.IndexOf(args, name) is var i and >= 0 && i + 1 < args.Length ? args[i + 1] : null;

if (mode == "invoke")
{
    return await InvokeBench.RunAsync(args, Arg);
}

if (mode == "burst-worker")
{
    await using var db = new Database(PgOptions(args[1]));
    var ledger = NewLedger(db);
    var results = await Task.WhenAll(Enumerable.Range(0, int.Parse(args[3])).Select(i => Task.Run(() => ledger.ReserveAsync(args[2], $"{args[4]}-{i}", 10_000))));
    Console.WriteLine("RESERVED=" + results.Count(r => r.Status == ReserveStatus.Reserved));
    Console.WriteLine("REFUSED=" + results.Count(r => r.Status == ReserveStatus.BudgetExceeded));
    return 0;
}

var seconds = double.Parse(Arg("--seconds") ?? "5", System.Globalization.CultureInfo.InvariantCulture);
var pg = Arg("--pg") ?? (Environment.GetEnvironmentVariable("ARRAKIS_TEST_PG") is { Length: > 0 } fromEnv ? fromEnv : null);
var rows = new List<string>();
foreach (var engine in pg is null ? ["sqlite"] : new[] { "sqlite", "postgres" })
{
    await using var db = new Database(engine == "sqlite" ? SqliteOptions() : PgOptions(pg!, "bench_" + Guid.NewGuid().ToString("N")[..10]));
    await new Migrator(db).ApplyAsync(Migrator.FromAssembly(typeof(Database).Assembly, db.Engine).Concat(Migrator.FromAssembly(typeof(FreesideService).Assembly, db.Engine)));
    using var checkpointer = new SqliteCheckpointer(db, TimeProvider.System, Microsoft.Extensions.Logging.Abstractions.NullLogger<SqliteCheckpointer>.Instance);
    await checkpointer.StartAsync(CancellationToken.None); // as every service host runs it
    var ledger = NewLedger(db);
    var communities = new CommunityStore(db, TimeProvider.System);
    for (var c = 0; c < 64; c++)
    {
        await communities.UpsertAsync($"bench-{c}", "bench", Tier.Enterprise, CommunityStore.MaxBudgetCents / 1000);
        await ledger.GrantAsync($"bench-{c}", $"bench-lot-{c}", LedgerIds.MaxAmountMicro / 1000, "grant");
    }

    rows.Add(await BaselineAsync(db, engine, seconds));
    foreach (var clients in new[] { 1, 32 })
    {
        foreach (var hot in new[] { true, false })
        {
            rows.Add(await RunAsync(ledger, engine, clients, hot, seconds));
        }
    }

    if (engine == "postgres")
    {
        // The same 32 clients through a pool of 4 connections per core: PostgreSQL runs at most that many backends.
        var pool = 4 * Environment.ProcessorCount;
        var bounded = new Npgsql.NpgsqlConnectionStringBuilder(db.Options.ConnectionString) { MaxPoolSize = pool }.ConnectionString;
        await using var small = new Database(PgOptions(bounded));
        foreach (var hot in new[] { true, false })
        {
            rows.Add(await RunAsync(NewLedger(small), $"postgres, pool {pool}", 32, hot, seconds));
        }
    }

    await checkpointer.StopAsync(CancellationToken.None);
    await db.DisposeAsync(); // closes the SQLite writer before its file is deleted (disposing again at the scope's end is a no-op)
    Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
    await BenchCleanup.RemoveAsync(db.Options);
}

var table = string.Join('\n', rows);
Console.WriteLine(table);
if (Arg("--out") is { } outPath)
{
    var section = $"""
        ## Ledger: reserve + finalize pairs

        - Machine: {Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}, .NET {Environment.Version}.
        - Command: `dotnet run -c Release --project bench/Arrakis.Bench -- ledger --seconds {seconds} --out docs/benchmarks.md` (PostgreSQL from `ARRAKIS_TEST_PG`).
        - Each pair is one `ReserveAsync` then one `FinalizeAsync` (writes a usage record). On PostgreSQL each is one call to a
          PL/pgSQL function (one round trip, its own transaction); on SQLite each is one transaction of several statements.
          Latency is per pair.
        - "hot" = every client on one community; "many" = clients spread over 64 communities. Baseline = a bare single-row `UPDATE` loop, same engine, same run.
        - "postgres" rows use the pool size of the connection string (`ARRAKIS_TEST_PG`: 60); "postgres, pool N" rows send the
          same 32 clients through an N-connection pool (4 per core). Either way the ledger runs at most 4 calls per core at once
          (`Ledger:MaxConcurrentWrites`); the others queue in the process.
        - Measured {DateTimeOffset.UtcNow:yyyy-MM-dd HH:mm} UTC.

        | engine | workload | clients | pairs/s | p50 ms | p99 ms |
        |---|---|---|---|---|---|
        {table}

        {BenchmarkDoc.Reading("ledger")}
        """;
    BenchmarkDoc.Write(outPath, "ledger", section);
}

return 0;

static async Task<string> RunAsync(Ledger ledger, string engine, int clients, bool hot, double seconds)
{
    var stop = Stopwatch.StartNew();
    var latencies = new List<double>[clients];
    var run = 0;
    await Task.WhenAll(Enumerable.Range(0, clients).Select(client => Task.Run(async () =>
    {
        var mine = latencies[client] = [];
        var community = hot ? "bench-0" : $"bench-{client % 64}";
        while (stop.Elapsed.TotalSeconds < seconds)
        {
            var id = $"b-{Guid.NewGuid():N}";
            var t = Stopwatch.GetTimestamp();
            var r = await ledger.ReserveAsync(community, id, 1_000);
            if (r.Status != ReserveStatus.Reserved)
            {
                throw new InvalidOperationException("reserve refused: " + r.Status);
            }

            await ledger.FinalizeAsync(id, 700, new UsageRecord("bench-agent", "cheap", "bench"));
            mine.Add(Stopwatch.GetElapsedTime(t).TotalMilliseconds);
            Interlocked.Increment(ref run);
        }
    })));
    var all = latencies.SelectMany(l => l).Order().ToArray();
    return Row(engine, hot ? "hot (1 community)" : "many (64 communities)", clients, all.Length / stop.Elapsed.TotalSeconds, all);
}

static async Task<string> BaselineAsync(Database db, string engine, double seconds)
{
    await using var c = await db.OpenAsync();
    await c.ExecuteAsync("CREATE TABLE IF NOT EXISTS bench_counter (id INTEGER PRIMARY KEY, n BIGINT NOT NULL)");
    await c.ExecuteAsync("INSERT INTO bench_counter (id, n) VALUES (1, 0) ON CONFLICT (id) DO NOTHING");
    var stop = Stopwatch.StartNew();
    var lat = new List<double>();
    while (stop.Elapsed.TotalSeconds < seconds)
    {
        var t = Stopwatch.GetTimestamp();
        await c.ExecuteAsync("UPDATE bench_counter SET n = n + 1 WHERE id = 1");
        lat.Add(Stopwatch.GetElapsedTime(t).TotalMilliseconds);
    }

    return Row(engine, "baseline: bare single-row UPDATE", 1, lat.Count / stop.Elapsed.TotalSeconds, lat.Order().ToArray());
}

static string Row(string engine, string workload, int clients, double rate, double[] sorted) =>
    $"| {engine} | {workload} | {clients} | {rate:0} | {Pct(sorted, 0.50):0.00} | {Pct(sorted, 0.99):0.00} |";

static double Pct(double[] sorted, double p) => sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];

static Ledger NewLedger(Database db) =>
    new(db, TimeProvider.System, new LedgerOptions(), new LedgerMetrics(new ServiceCollection().AddMetrics().BuildServiceProvider().GetRequiredService<IMeterFactory>()));

static StorageOptions SqliteOptions()
{
    var dir = Path.Combine(Path.GetTempPath(), "arrakis-bench-" + Guid.NewGuid().ToString("N")[..8]);
    Directory.CreateDirectory(dir);
    return StorageOptions.Resolve(new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["LOA_DATA_DIR"] = dir }).Build(), "freeside");
}

static StorageOptions PgOptions(string connection, string? schema = null)
{
    var config = new Dictionary<string, string?> { ["ConnectionStrings:Freeside"] = connection };
    if (schema is not null)
    {
        config["ConnectionStrings:Freeside"] = new Npgsql.NpgsqlConnectionStringBuilder(connection) { SearchPath = schema }.ConnectionString;
    }

    return StorageOptions.Resolve(new ConfigurationBuilder().AddInMemoryCollection(config).Build(), "freeside");
}
