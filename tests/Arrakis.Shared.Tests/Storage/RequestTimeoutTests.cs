using System.Diagnostics;
using Arrakis.Shared.Hosting;
using Arrakis.Shared.Storage;
using Npgsql;

namespace Arrakis.Shared.Tests.Storage;

/// <summary>Database:RequestTimeout, the bound on request-path database operations on PostgreSQL.</summary>
public sealed class RequestTimeoutTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static StorageOptions Resolve(string? connectionString, string? timeout) => StorageOptions.Resolve(
        new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["ConnectionStrings:Freeside"] = connectionString,
            [StorageOptions.RequestTimeoutSetting] = timeout,
            ["LOA_DATA_DIR"] = TestStorage.TempDir(),
        }).Build(), "freeside");

    [Fact]
    public void The_setting_defaults_to_5_s_is_read_and_is_refused_outside_1_s_to_1_min()
    {
        const string pg = "Host=127.0.0.1;Username=postgres";
        Assert.Equal(TimeSpan.FromSeconds(5), Resolve(pg, null).RequestTimeout);
        Assert.Equal(TimeSpan.FromSeconds(2), Resolve(pg, "00:00:02").RequestTimeout);
        foreach (var bad in new[] { "00:00:00.5", "00:05:00", "5s" })
        {
            var ex = Assert.Throws<ConnectionStringException>(() => Resolve(pg, bad));
            Assert.Contains(StorageOptions.RequestTimeoutSetting, ex.Message);
        }
    }

    [Fact]
    public async Task On_postgres_an_operation_that_does_not_finish_fails_at_the_deadline_as_the_database_being_unavailable()
    {
        await using var db = new Database(Resolve("Host=127.0.0.1;Username=postgres", "00:00:01"));
        var cancelled = new TaskCompletionSource();
        var sw = Stopwatch.StartNew();
        var ex = await Assert.ThrowsAsync<NpgsqlException>(() => db.WithinRequestTimeoutAsync<int>(async t =>
        {
            t.Register(cancelled.SetResult);
            await Task.Delay(Timeout.Infinite, CancellationToken.None); // a command that never answers and ignores the token
            return 0;
        }, Ct));
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(3), $"took {sw.Elapsed}");
        Assert.Equal("database", ServiceDefaults.UnavailableDependencyOf(ex));
        await cancelled.Task.WaitAsync(TimeSpan.FromSeconds(1), Ct); // its queueing, opening and retries are told to stop
    }

    [Fact]
    public async Task On_sqlite_an_operation_runs_as_it_is()
    {
        await using var db = new Database(Resolve(null, "00:00:01"));
        Assert.Equal(7, await db.WithinRequestTimeoutAsync(async t =>
        {
            await Task.Delay(TimeSpan.FromSeconds(1.5), t); // SQLite is in-process: no deadline applies
            return 7;
        }, Ct));
    }
}
