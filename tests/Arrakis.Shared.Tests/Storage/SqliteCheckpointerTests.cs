using Arrakis.Shared.Storage;
using Dapper;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging.Abstractions;

namespace Arrakis.Shared.Tests.Storage;

public sealed class SqliteCheckpointerTests
{
    /// <summary>
    /// Commits stay in the write-ahead log (no commit checkpoints below the fallback size), and the background
    /// checkpointer, not a request, copies them into the database file.
    /// </summary>
    [Fact]
    public async Task Commits_reach_the_database_file_through_the_background_checkpointer_not_the_commit()
    {
        var options = TestStorage.Options("sqlite", "freeside");
        var file = new SqliteConnectionStringBuilder(options.ConnectionString).DataSource;
        await using var db = new Database(options);
        await using (var c = await db.OpenAsync(TestContext.Current.CancellationToken))
        {
            Assert.Equal(Database.FallbackCheckpointPages, await c.ExecuteScalarAsync<int>("PRAGMA wal_autocheckpoint"));
            await c.ExecuteAsync("CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB NOT NULL)");
            for (var i = 0; i < 192; i++)
            {
                // 192 commits, ~6 MB of log: past the 1,000 pages (4 MB) at which SQLite's default makes a commit checkpoint
                await c.ExecuteAsync("INSERT INTO blobs (body) VALUES (randomblob(32768))");
            }
        }

        var before = new FileInfo(file).Length;
        Assert.True(before < 1_000_000, $"a commit checkpointed: the database file is already {before} bytes");
        Assert.True(new FileInfo(file + "-wal").Length > 6_000_000);

        using var checkpointer = new SqliteCheckpointer(db, TimeProvider.System, NullLogger<SqliteCheckpointer>.Instance);
        await checkpointer.StartAsync(TestContext.Current.CancellationToken);
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (new FileInfo(file).Length < 6_000_000)
        {
            Assert.True(waited.Elapsed < TimeSpan.FromSeconds(10), "the checkpointer never copied the log into the database file");
            await Task.Delay(20, TestContext.Current.CancellationToken);
        }

        await checkpointer.StopAsync(TestContext.Current.CancellationToken);
        var (log, checkpointed) = await checkpointer.CheckpointAsync(TestContext.Current.CancellationToken);
        Assert.Equal(log, checkpointed); // nothing left behind
    }

    [Fact]
    public async Task On_postgres_the_checkpointer_stops_at_once()
    {
        TestStorage.RequirePostgres(); // skips visibly without a server; CI always has one
        await using var db = new Database(TestStorage.Options("postgres", "freeside"));
        using var checkpointer = new SqliteCheckpointer(db, TimeProvider.System, NullLogger<SqliteCheckpointer>.Instance);
        await checkpointer.StartAsync(TestContext.Current.CancellationToken);
        await checkpointer.ExecuteTask!.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken); // ends by itself, no timer
        Assert.True(checkpointer.ExecuteTask.IsCompletedSuccessfully);
    }
}
