using Arrakis.Shared.Storage;
using Dapper;

namespace Arrakis.Shared.Tests.Storage;

public sealed class WriterConnectionTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    sealed record Item(long Id, string Name, long? Score);

    static async Task<Database> ItemsAsync(string engine)
    {
        var options = TestStorage.Options(engine, "shared");
        var db = new Database(options);
        await using var c = await db.OpenAsync(Ct);
        if (options.Schema is { } schema)
        {
            await c.ExecuteAsync($"CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
        }

        await c.ExecuteAsync("DROP TABLE IF EXISTS items; CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, score BIGINT)");
        return db;
    }

    [Fact]
    public async Task The_sqlite_writer_is_one_connection_that_keeps_its_compiled_statements()
    {
        await using var db = await ItemsAsync("sqlite");
        System.Data.Common.DbConnection first;
        await using (var w = await db.OpenWriterAsync(Ct))
        {
            first = w.Connection;
            Assert.Equal(1, await w.Connection.ExecAsync("INSERT INTO items (id, name, score) VALUES (@id, @name, @score)", new { id = 1L, name = "a", score = (long?)null }));
        }

        await using (var w = await db.OpenWriterAsync(Ct))
        {
            Assert.Same(first, w.Connection); // the same connection, handed back
            var cache = StatementCache.For(w.Connection);
            Assert.NotNull(cache);
            Assert.Equal(1, cache.Count);
            // Same SQL again (another argument type with the same names, values rebound): no new statement is compiled.
            Assert.Equal(1, await w.Connection.ExecAsync("INSERT INTO items (id, name, score) VALUES (@id, @name, @score)", new { name = "b", score = (long?)7, id = 2L }));
            Assert.Equal(1, cache.Count);
            Assert.Equal(new Item(2, "b", 7), await w.Connection.RowAsync<Item>("SELECT id AS Id, name AS Name, score AS Score FROM items WHERE id = @id", new { id = 2L }));
            Assert.Null(await w.Connection.RowAsync<Item>("SELECT id AS Id, name AS Name, score AS Score FROM items WHERE id = @id", new { id = 99L }));
            Assert.Equal([new Item(1, "a", null), new Item(2, "b", 7)],
                await w.Connection.RowsAsync<Item>("SELECT id AS Id, name AS Name, score AS Score FROM items ORDER BY id", null));
            Assert.Equal(3, cache.Count);
        }

        // What the writer committed is what any other connection reads.
        await using var reader = await db.OpenAsync(Ct);
        Assert.Equal(2, await reader.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM items"));
    }

    [Fact]
    public async Task A_cached_statement_follows_the_transaction_it_is_given_and_rolls_back_with_it()
    {
        await using var db = await ItemsAsync("sqlite");
        await using (var w = await db.OpenWriterAsync(Ct))
        {
            var kept = await Database.InWriteTransactionAsync(w.Connection, async (c, tx) =>
            {
                await c.ExecAsync("INSERT INTO items (id, name) VALUES (@id, @name)", new { id = 1L, name = "rolled back" }, tx);
                Assert.Equal(1, await c.RowAsync<long>("SELECT COUNT(*) FROM items", null, tx));
                return (0, false);
            }, Ct);
            await Database.InWriteTransactionAsync(w.Connection, async (c, tx) => (await c.ExecAsync("INSERT INTO items (id, name) VALUES (@id, @name)", new { id = 2L, name = "kept" }, tx), true), Ct);
            Assert.Equal(0, kept);
            Assert.Equal([new Item(2, "kept", null)], await w.Connection.RowsAsync<Item>("SELECT id AS Id, name AS Name, score AS Score FROM items", null));
        }
    }

    [Fact]
    public async Task A_discarded_writer_is_replaced_and_the_next_one_works()
    {
        await using var db = await ItemsAsync("sqlite");
        System.Data.Common.DbConnection first;
        await using (var w = await db.OpenWriterAsync(Ct))
        {
            first = w.Connection;
            await w.Connection.ExecAsync("INSERT INTO items (id, name) VALUES (@id, @name)", new { id = 1L, name = "a" });
            w.Discard();
        }

        Assert.Null(StatementCache.For(first)); // its statements were finalized with it
        await using (var w = await db.OpenWriterAsync(Ct))
        {
            Assert.NotSame(first, w.Connection);
            Assert.Equal(1, await w.Connection.ExecAsync("INSERT INTO items (id, name) VALUES (@id, @name)", new { id = 2L, name = "b" }));
        }
    }

    /// <summary>
    /// A writer found closed (its user closed the connection) is replaced by the next <c>OpenWriterAsync</c>. Putting the
    /// closed writer's page cache size back threw InvalidOperationException (no statement runs on a closed connection),
    /// which only a SqliteException was caught for, so that writer call failed instead of getting a fresh writer.
    /// </summary>
    [Fact]
    public async Task A_writer_found_closed_is_replaced()
    {
        await using var db = await ItemsAsync("sqlite");
        System.Data.Common.DbConnection first;
        await using (var w = await db.OpenWriterAsync(Ct))
        {
            first = w.Connection;
            await w.Connection.CloseAsync();
        }

        await using (var w = await db.OpenWriterAsync(Ct))
        {
            Assert.NotSame(first, w.Connection);
            Assert.Equal(1, await w.Connection.ExecAsync("INSERT INTO items (id, name) VALUES (@id, @name)", new { id = 1L, name = "a" }));
        }
    }

    /// <summary>
    /// The writer's 32 MiB page cache is the writer's alone. A writer that is replaced (discarded after a failed write, such
    /// as a request cancelled mid-write) goes back to the connection pool; it went back with its 32 MiB setting, and the
    /// readers handed that connection later each grew their cache to 32 MiB.
    /// </summary>
    [Fact]
    public async Task A_replaced_writer_leaves_its_page_cache_size_behind()
    {
        await using var db = await ItemsAsync("sqlite");
        long Size(System.Data.Common.DbConnection c) => c.ExecuteScalar<long>("PRAGMA cache_size");
        long before;
        await using (var reader = await db.OpenAsync(Ct))
        {
            before = Size(reader);
        }

        Assert.NotEqual(-Database.WriterCacheKib, before);
        for (var i = 0; i < 3; i++)
        {
            await using var w = await db.OpenWriterAsync(Ct);
            Assert.Equal(-Database.WriterCacheKib, Size(w.Connection));
            await w.Connection.ExecAsync("INSERT INTO items (id, name) VALUES (@id, @name)", new { id = (long)i, name = "a" });
            w.Discard();
        }

        // Every pooled connection (the discarded writers among them) as a reader.
        var readers = new List<System.Data.Common.DbConnection>();
        try
        {
            for (var i = 0; i < 4; i++)
            {
                readers.Add(await db.OpenAsync(Ct));
            }

            Assert.All(readers, r => Assert.Equal(before, Size(r)));
        }
        finally
        {
            foreach (var r in readers)
            {
                await r.DisposeAsync();
            }
        }

        await using (var w = await db.OpenWriterAsync(Ct))
        {
            Assert.Equal(-Database.WriterCacheKib, Size(w.Connection)); // the writer still has its own
        }
    }

    [Fact]
    public async Task Writers_of_one_file_take_turns()
    {
        await using var db = await ItemsAsync("sqlite");
        var inside = 0;
        var most = 0;
        await Task.WhenAll(Enumerable.Range(0, 16).Select(i => Task.Run(async () =>
        {
            await using var w = await db.OpenWriterAsync(Ct);
            var now = Interlocked.Increment(ref inside);
            InterlockedMax(ref most, now);
            await w.Connection.ExecAsync("INSERT INTO items (id, name) VALUES (@id, @name)", new { id = (long)i, name = "n" });
            await Task.Delay(2, Ct);
            Interlocked.Decrement(ref inside);
        }, Ct)));
        Assert.Equal(1, most);
        await using var reader = await db.OpenAsync(Ct);
        Assert.Equal(16, await reader.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM items"));
    }

    [Fact]
    public async Task Past_its_capacity_the_cache_runs_statements_uncached()
    {
        await using var db = await ItemsAsync("sqlite");
        await using var w = await db.OpenWriterAsync(Ct);
        for (var i = 0; i < StatementCache.Capacity + 5; i++)
        {
            Assert.Equal(1, await w.Connection.ExecAsync($"INSERT INTO items (id, name) VALUES (@id, 'n{i}')", new { id = (long)i }));
        }

        Assert.Equal(StatementCache.Capacity, StatementCache.For(w.Connection)!.Count);
        Assert.Equal(StatementCache.Capacity + 5, await w.Connection.RowAsync<long>("SELECT COUNT(*) FROM items", null));
    }

    [Fact]
    public async Task On_postgres_the_writer_is_a_pooled_connection_and_the_calls_go_through_dapper()
    {
        TestStorage.RequirePostgres();
        await using var db = await ItemsAsync("postgres");
        await using (var w = await db.OpenWriterAsync(Ct))
        {
            Assert.Null(StatementCache.For(w.Connection));
            Assert.Equal(1, await w.Connection.ExecAsync("INSERT INTO items (id, name, score) VALUES (@id, @name, @score)", new { id = 1L, name = "a", score = (long?)3 }));
            Assert.Equal(new Item(1, "a", 3), await w.Connection.RowAsync<Item>("SELECT id AS Id, name AS Name, score AS Score FROM items WHERE id = @id", new { id = 1L }));
        }

        await using (var w1 = await db.OpenWriterAsync(Ct))
        await using (var w2 = await db.OpenWriterAsync(Ct)) // no gate: PostgreSQL writers run side by side
        {
            Assert.NotSame(w1.Connection, w2.Connection);
        }
    }

    static void InterlockedMax(ref int target, int value)
    {
        int seen;
        while ((seen = Volatile.Read(ref target)) < value && Interlocked.CompareExchange(ref target, value, seen) != seen)
        {
        }
    }
}
