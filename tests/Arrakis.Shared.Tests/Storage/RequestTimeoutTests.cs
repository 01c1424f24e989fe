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

    /// <summary>
    /// A command the caller stopped waiting for may still commit (the database answers again before the connection
    /// breaks): the caller's hook gets the work once it has ended, with its outcome, so it can undo what landed. Work
    /// that ends in time never reaches the hook.
    /// </summary>
    [Fact]
    public async Task On_postgres_work_that_ends_after_the_caller_stopped_waiting_is_handed_to_the_hook_once_it_ends()
    {
        await using var db = new Database(Resolve("Host=127.0.0.1;Username=postgres", "00:00:01"));
        var handed = new List<Task<int>>();
        void Hook(Task<int> work)
        {
            lock (handed)
            {
                handed.Add(work);
            }
        }

        Assert.Equal(3, await db.WithinRequestTimeoutAsync(_ => Task.FromResult(3), Hook, Ct));
        Assert.Equal(4, await db.WithinRequestTimeoutAsync(async _ => { await Task.Delay(50, CancellationToken.None); return 4; }, Hook, Ct));

        var late = new TaskCompletionSource<int>();
        await Assert.ThrowsAsync<NpgsqlException>(() => db.WithinRequestTimeoutAsync(_ => late.Task, Hook, Ct));
        Assert.Empty(handed); // still running: nothing to clean up yet
        late.SetResult(5); // it committed after all
        Assert.Equal(5, await Assert.Single(handed));

        // The caller's own cancellation (its client left) stops the wait as well.
        handed.Clear();
        using var leaving = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var running = new TaskCompletionSource<int>();
        var call = db.WithinRequestTimeoutAsync(_ => running.Task, Hook, leaving.Token);
        leaving.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => call);
        running.SetException(new InvalidOperationException("the connection broke"));
        Assert.True(Assert.Single(handed).IsFaulted);
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
