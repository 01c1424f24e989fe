using System.Data.Common;
using Microsoft.Data.Sqlite;
using Npgsql;

namespace Arrakis.Shared.Storage;

/// <summary>
/// One service's database: opens connections with the engine's settings and classifies engine errors, so
/// stores can share one code path and portable SQL.
/// </summary>
public sealed class Database : IAsyncDisposable
{
    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<object, object> InitializedHandles = new();
    static readonly object InitializedMarker = new();
    static readonly System.Collections.Concurrent.ConcurrentDictionary<string, SemaphoreSlim> WriteGates = new(StringComparer.Ordinal);
    readonly NpgsqlDataSource? _npgsql;
    readonly SemaphoreSlim? _writeGate;
    SqliteConnection? _writer; // only touched while holding _writeGate
    long _writerPoolCacheSize; // the writer connection's page cache size before it took WriterCacheKib

    public Database(StorageOptions options)
    {
        Options = options;
        if (options.Engine == StorageEngine.Postgres)
        {
            // No store keeps session state (no SET, LISTEN, temp tables or session locks), and the DISCARD ALL that
            // Npgsql otherwise sends on each reuse of a pooled connection also throws away PL/pgSQL's cached plans, so
            // every ledger function call would re-plan each of its statements.
            var builder = new NpgsqlDataSourceBuilder(options.ConnectionString);
            builder.ConnectionStringBuilder.NoResetOnClose = true;
            // Statements used at least twice on a physical connection are prepared on the server, so the ledger's function
            // calls skip parsing and planning on each call (one client's reserve+finalize: ~0.9 -> ~0.65 ms, same machine).
            // A connection string that sets Max Auto Prepare keeps its own value (0 turns it off, e.g. behind a pooler in
            // transaction mode).
            var given = new DbConnectionStringBuilder { ConnectionString = options.ConnectionString };
            if (!given.ContainsKey("Max Auto Prepare") && !given.ContainsKey("MaxAutoPrepare"))
            {
                builder.ConnectionStringBuilder.MaxAutoPrepare = 64;
                builder.ConnectionStringBuilder.AutoPrepareMinUsages = 2;
            }
            _npgsql = builder.Build();
        }
        else
        {
            var file = Path.GetFullPath(new SqliteConnectionStringBuilder(options.ConnectionString).DataSource);
            _writeGate = WriteGates.GetOrAdd(file, _ => new SemaphoreSlim(1, 1));
        }
    }

    /// <summary>The SQLite writer connection's page cache, in KiB.</summary>
    public const int WriterCacheKib = 32 * 1024;

    /// <summary>WAL size (pages) at which a commit checkpoints by itself, when the background checkpointer has fallen behind.</summary>
    public const int FallbackCheckpointPages = 16_000;

    public StorageOptions Options { get; }

    public StorageEngine Engine => Options.Engine;

    public bool IsPostgres => Options.Engine == StorageEngine.Postgres;

    public async Task<DbConnection> OpenAsync(CancellationToken ct = default)
    {
        if (_npgsql is not null)
        {
            return await _npgsql.OpenConnectionAsync(ct);
        }

        var connection = new SqliteConnection(Options.ConnectionString);
        await connection.OpenAsync(ct);
        if (!InitializedHandles.TryGetValue(connection.Handle!, out _))
        {
            // Once per pooled sqlite3 handle (pragmas stay set while it is pooled): WAL lets readers run beside the single
            // writer; busy_timeout makes writers queue instead of failing. The WAL is checkpointed off the request path by
            // SqliteCheckpointer; the automatic checkpoint (which would make one unlucky commit copy and fsync ~1,000
            // pages, a 10-15 ms stall) only steps in if the WAL grows past FallbackCheckpointPages anyway.
            await using var pragma = connection.CreateCommand();
            pragma.CommandText = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000; PRAGMA foreign_keys=ON; " +
                $"PRAGMA wal_autocheckpoint={FallbackCheckpointPages};";
            await pragma.ExecuteNonQueryAsync(ct);
            InitializedHandles.AddOrUpdate(connection.Handle!, InitializedMarker);
        }

        return connection;
    }

    /// <summary>
    /// Opens a connection to write with. On SQLite it is this database's one long-lived writer connection, handed out
    /// after queuing at the file's write gate and kept open between writes. The writers that come through here (the
    /// ledger, idempotency) queue FIFO at the gate before they touch SQLite's single write lock: a handed-over semaphore
    /// is far cheaper than SQLite's busy handler, which sleeps 1-100 ms between retries; other stores' occasional writes
    /// on pooled connections, and other processes, still meet the busy timeout. Its
    /// page cache stays valid across its own commits, where a pooled connection that another connection wrote behind
    /// must drop its whole cache and read every page again; and it keeps its compiled statements (<see cref="StatementCache"/>,
    /// used through <see cref="CachedSql"/>). On PostgreSQL it is a pooled connection. Never hold two at once (SQLite: deadlock).
    /// </summary>
    public async ValueTask<WriteConnection> OpenWriterAsync(CancellationToken ct = default)
    {
        if (_writeGate is null)
        {
            return new WriteConnection(this, await OpenAsync(ct), null);
        }

        await _writeGate.WaitAsync(ct);
        try
        {
            if (_writer is null || _writer.State != System.Data.ConnectionState.Open)
            {
                CloseWriter();
                var connection = (SqliteConnection)await OpenAsync(ct);
                await using (var cache = connection.CreateCommand())
                {
                    // 32 MiB of page cache (SQLite's default is 2 MiB): the writer's inserts land on index pages all over
                    // the growing tables (random reservation ids and keys), and each page the cache had dropped is read
                    // again from the file or its log. Bench, 32 clients: read calls per invoke 18.7 -> 13.
                    // The connection's own size is read first: CloseWriter gives it back before the connection returns to the
                    // pool, or every reader later handed that connection would grow its cache to 32 MiB too.
                    cache.CommandText = $"PRAGMA cache_size; PRAGMA cache_size=-{WriterCacheKib}";
                    _writerPoolCacheSize = Convert.ToInt64(await cache.ExecuteScalarAsync(ct), System.Globalization.CultureInfo.InvariantCulture);
                }

                StatementCache.Attach(connection);
                _writer = connection;
            }

            return new WriteConnection(this, _writer, _writeGate);
        }
        catch
        {
            _writeGate.Release();
            throw;
        }
    }

    /// <summary>
    /// Deletes the rows of <paramref name="table"/> that match <paramref name="where"/>, at most <paramref name="batch"/>
    /// per statement, each through the writer, until a statement deletes fewer; returns how many went. Each statement is
    /// its own short write, so on SQLite the ledger's writes queue between them instead of behind one long delete.
    /// <paramref name="key"/> names the rows: a column, or a column list such as <c>a, b</c>.
    /// </summary>
    public async Task<int> DeleteInBatchesAsync(string table, string key, string where, object args, int batch, CancellationToken ct = default)
    {
        var sql = $"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE {where} LIMIT {batch})";
        var total = 0;
        int deleted;
        do
        {
            await using var writer = await OpenWriterAsync(ct);
            deleted = await writer.Connection.ExecAsync(sql, args);
            total += deleted;
        }
        while (deleted == batch);

        return total;
    }

    /// <summary>Forgets the writer connection after a failure it may not have recovered from; the next writer opens a fresh one.</summary>
    internal void DropWriter(DbConnection connection)
    {
        if (ReferenceEquals(_writer, connection))
        {
            CloseWriter();
        }
    }

    void CloseWriter()
    {
        if (_writer is { } writer)
        {
            _writer = null;
            StatementCache.Detach(writer);
            try
            {
                // Back to the pool with a reader's page cache (shrinking it frees the pages over that size).
                using var cache = writer.CreateCommand();
                cache.CommandText = $"PRAGMA cache_size={_writerPoolCacheSize}";
                cache.ExecuteNonQuery();
            }
            catch (Exception ex) when (ex is SqliteException or InvalidOperationException)
            {
                // Not even a pragma runs on it (or it is closed already, as OpenWriterAsync finds it): it goes back as it
                // is (the writer's size, at worst).
            }

            writer.Dispose();
        }
    }

    /// <summary>
    /// Begins a write transaction. On SQLite it is BEGIN IMMEDIATE, so concurrent writers serialize at the start
    /// instead of failing at commit; on PostgreSQL it is READ COMMITTED and stores use conditional updates.
    /// </summary>
    public static async Task<DbTransaction> BeginWriteAsync(DbConnection connection, CancellationToken ct = default)
    {
        if (connection is SqliteConnection sqlite)
        {
            return sqlite.BeginTransaction(deferred: false);
        }

        return await connection.BeginTransactionAsync(ct);
    }

    /// <summary>Runs <paramref name="work"/> in one write transaction on <paramref name="connection"/>; the work says whether to commit.</summary>
    public static async Task<T> InWriteTransactionAsync<T>(DbConnection connection, Func<DbConnection, DbTransaction, Task<(T Result, bool Commit)>> work, CancellationToken ct = default)
    {
        await using var tx = await BeginWriteAsync(connection, ct);
        var (result, commit) = await work(connection, tx);
        if (commit)
        {
            await tx.CommitAsync(ct);
        }
        else
        {
            await tx.RollbackAsync(ct);
        }

        return result;
    }

    public static bool IsUniqueViolation(Exception ex) => ex switch
    {
        PostgresException pg => pg.SqlState == PostgresErrorCodes.UniqueViolation,
        SqliteException sq => sq.SqliteErrorCode == 19 && (sq.SqliteExtendedErrorCode == 2067 || sq.SqliteExtendedErrorCode == 1555),
        _ => false,
    };

    public static bool IsTransient(Exception ex) => ex switch
    {
        PostgresException pg => pg.SqlState is PostgresErrorCodes.SerializationFailure or PostgresErrorCodes.DeadlockDetected,
        SqliteException sq => sq.SqliteErrorCode is 5 or 6,
        NpgsqlException n => n.IsTransient,
        _ => false,
    };

    /// <summary>
    /// Runs a short request-path operation (one function call or a few statements) within <see cref="StorageOptions.RequestTimeout"/>
    /// on PostgreSQL, so a caller gets 503 promptly when the database stops answering without closing its connections (a
    /// failover, a network partition). Npgsql alone took 30 s (the command timeout) and then twice the connect timeout for
    /// a cancel request that cannot get through either, and every transient retry opened a connection that waited the
    /// connect timeout again: the first call after the freeze hung for over a minute. Past the deadline the operation's
    /// token is cancelled (its queueing, connection opening and retries stop) and this throws an
    /// <see cref="NpgsqlException"/> (a timeout: 503, dependency database). A command still in flight is left to Npgsql,
    /// which breaks its connection (never returned to the pool) once its own timeout and cancel request ran out; should the
    /// database answer before then, it commits after the caller was told it failed (the overload with a hook lets the
    /// caller undo that). On SQLite (in-process) the work runs as it is.
    /// </summary>
    public Task<T> WithinRequestTimeoutAsync<T>(Func<CancellationToken, Task<T>> work, CancellationToken ct = default) =>
        WithinRequestTimeoutAsync(work, null, ct);

    /// <summary>
    /// As <see cref="WithinRequestTimeoutAsync{T}(Func{CancellationToken, Task{T}}, CancellationToken)"/>; when the caller
    /// stopped waiting (the deadline passed, or <paramref name="ct"/> was cancelled) while the work was still running,
    /// <paramref name="abandoned"/> gets the work once it has ended. What it wrote may have committed after the caller was
    /// told it failed (the database answered again before the connection broke): the caller cleans that up there.
    /// </summary>
    public Task<T> WithinRequestTimeoutAsync<T>(Func<CancellationToken, Task<T>> work, Action<Task<T>>? abandoned, CancellationToken ct = default) =>
        _npgsql is null ? work(ct) : BoundedAsync(work, abandoned, ct);

    async Task<T> BoundedAsync<T>(Func<CancellationToken, Task<T>> work, Action<Task<T>>? abandoned, CancellationToken ct)
    {
        var limit = Options.RequestTimeout;
        var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(limit);
        Task<T> task;
        try
        {
            task = work(deadline.Token);
        }
        catch
        {
            deadline.Dispose();
            throw;
        }

        // The token stays valid until the work is over, even when this stops waiting for it; its late failure is observed.
        // Whichever comes second, the work's end or the caller giving up on it, hands the work to `abandoned`.
        var ends = 0;
        _ = task.ContinueWith((t, state) =>
        {
            _ = t.Exception;
            ((CancellationTokenSource)state!).Dispose();
            if (Interlocked.Increment(ref ends) == 2)
            {
                Abandoned(abandoned!, t);
            }
        }, deadline, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        try
        {
            return await task.WaitAsync(limit, ct);
        }
        catch (Exception ex) when (ex is TimeoutException or OperationCanceledException)
        {
            // The caller stops waiting: the work may still commit what it sent.
            if (abandoned is not null && Interlocked.Increment(ref ends) == 2)
            {
                Abandoned(abandoned, task);
            }

            if (ct.IsCancellationRequested)
            {
                throw;
            }

            throw new NpgsqlException($"The database did not answer within {limit.TotalSeconds:0.#} s.", ex as TimeoutException ?? new TimeoutException(ex.Message, ex));
        }
    }

    static void Abandoned<T>(Action<Task<T>> abandoned, Task<T> work)
    {
        try
        {
            abandoned(work);
        }
        catch (Exception)
        {
            // a clean-up hook must not fault the work's continuation (nor turn the caller's 503 into something else)
        }
    }

    public async Task<bool> PingAsync(CancellationToken ct)
    {
        try
        {
            await using var connection = await OpenAsync(ct);
            await using var command = connection.CreateCommand();
            command.CommandText = "SELECT 1";
            await command.ExecuteScalarAsync(ct);
            return true;
        }
        catch (Exception ex) when (ex is DbException or InvalidOperationException or TimeoutException or System.Net.Sockets.SocketException or OperationCanceledException)
        {
            return false;
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_npgsql is not null)
        {
            await _npgsql.DisposeAsync();
        }

        if (_writeGate is not null && _writer is not null)
        {
            await _writeGate.WaitAsync();
            try
            {
                CloseWriter();
            }
            finally
            {
                _writeGate.Release();
            }
        }
    }

    /// <summary>A connection to write with (see <see cref="OpenWriterAsync"/>); disposing it hands the writer back.</summary>
    public sealed class WriteConnection : IAsyncDisposable
    {
        readonly Database _db;
        readonly SemaphoreSlim? _gate;
        int _released;

        internal WriteConnection(Database db, DbConnection connection, SemaphoreSlim? gate)
        {
            _db = db;
            _gate = gate;
            Connection = connection;
        }

        public DbConnection Connection { get; }

        /// <summary>Call when work on the connection failed: a pooled connection is closed anyway; the SQLite writer is replaced.</summary>
        public void Discard()
        {
            if (_gate is not null)
            {
                _db.DropWriter(Connection);
            }
        }

        public async ValueTask DisposeAsync()
        {
            if (Interlocked.Exchange(ref _released, 1) != 0)
            {
                return;
            }

            if (_gate is null)
            {
                await Connection.DisposeAsync();
            }
            else
            {
                _gate.Release();
            }
        }
    }
}
