using System.Diagnostics;
using Arrakis.Freeside.Ledger;

namespace Arrakis.Freeside.Tests.Ledger;

/// <summary>Two separate OS processes share one PostgreSQL database and race 256 reserves against a budget admitting exactly k.</summary>
public sealed class CrossProcessBurstTests
{
    [Fact]
    public async Task Burst_of_256_reserves_from_two_processes_admits_exactly_k_on_postgres()
    {
        TestStorage.RequirePostgres();
        var options = TestStorage.Options("postgres", "freeside");
        await using var w = await LedgerWorld.CreateAsync("postgres", options);
        const int K = 41;
        await w.CommunityAsync("hot", budgetCents: K, creditMicro: 1_000_000_000);

        var baseDir = AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar);
        var worker = Path.GetFullPath(Path.Combine(baseDir, "..", "..", "Arrakis.Bench", new DirectoryInfo(baseDir).Name, "Arrakis.Bench.dll"));
        Assert.True(File.Exists(worker), "bench worker not built at " + worker);
        var runs = await Task.WhenAll(new[] { "p1", "p2" }.Select(prefix => RunWorkerAsync(worker, options.ConnectionString, prefix)));

        Assert.Equal(K, runs.Sum(r => r.Reserved));
        Assert.Equal(256 - K, runs.Sum(r => r.Refused));
        // The workers run on the real clock, so read the month row they wrote rather than the fake clock's month.
        Assert.Equal(K * 10_000L, await w.ScalarAsync<long>("SELECT CAST(SUM(reserved_micro) AS BIGINT) FROM budget_months WHERE community_id = 'hot'"));
        await w.AssertConservedAsync();
    }

    static async Task<(int Reserved, int Refused)> RunWorkerAsync(string dll, string connection, string prefix)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in new[] { dll, "burst-worker", connection, "hot", "128", prefix })
        {
            start.ArgumentList.Add(arg);
        }

        using var process = Process.Start(start)!;
        var output = await process.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        var error = await process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        await process.WaitForExitAsync(TestContext.Current.CancellationToken);
        Assert.True(process.ExitCode == 0, error);
        int Value(string name) => int.Parse(output.Split('\n').Single(l => l.StartsWith(name + "=", StringComparison.Ordinal))[(name.Length + 1)..].Trim());
        return (Value("RESERVED"), Value("REFUSED"));
    }
}
