using System.ComponentModel.DataAnnotations;
using Arrakis.Shared.Storage;
using Dapper;

namespace Arrakis.Freeside.Idempotency;

public enum IdempotencyState
{
    /// <summary>This caller owns the key and must Complete or Abandon it.</summary>
    Started,

    /// <summary>The same request finished before: replay its stored response.</summary>
    Replay,

    /// <summary>The key was used with a different body: 409 IDEMPOTENCY_KEY_REUSED.</summary>
    KeyReused,

    /// <summary>The first request with this key is still running: 409 REQUEST_IN_PROGRESS.</summary>
    InProgress,
}

public sealed record IdempotencyBegin(IdempotencyState State, int? Status = null, string? Body = null, string? ContentType = null);

public sealed class IdempotencyOptions
{
    public const string Section = "Idempotency";

    /// <summary>How long stored responses are kept (at least 24 h, DESIGN §3).</summary>
    [Range(typeof(TimeSpan), "1.00:00:00", "30.00:00:00", ErrorMessage = "Idempotency:Retention must be between 1 and 30 days, e.g. 1.00:00:00.")]
    public TimeSpan Retention { get; set; } = TimeSpan.FromHours(25);

    /// <summary>
    /// An in-progress key not renewed for this long is considered crashed and may be taken over. A running call renews
    /// its key every third of this (<see cref="Invoke.ReservationLease"/>), so only a freeside that died lets it lapse.
    /// </summary>
    [Range(typeof(TimeSpan), "00:00:10", "01:00:00", ErrorMessage = "Idempotency:LeaseTimeout must be between 10 s and 1 h, e.g. 00:10:00.")]
    public TimeSpan LeaseTimeout { get; set; } = TimeSpan.FromMinutes(10);
}

/// <summary>
/// Stripe-style idempotency keys scoped to a community. The primary key (scope, key) is the race guard: the first
/// INSERT wins, everyone else reads what it stored. Each claim names its owner, the reservation of the call that holds
/// the key: only the owner renews, completes, rewrites or abandons it, and the key is taken over only once the owner's
/// reservation is no longer pending, so a call that lost its key can neither charge nor free it (C4).
/// </summary>
public sealed class IdempotencyStore(Database db, TimeProvider time, IdempotencyOptions options)
{
    /// <summary>Claims a key that is not there yet (one row, or none when it is); the ledger runs it with a reservation.</summary>
    public const string ClaimSql = """
        INSERT INTO idempotency_keys (scope, idem_key, request_hash, state, owner, created_at, updated_at)
        VALUES (@scope, @key, @requestHash, 'in_progress', @owner, @now, @now) ON CONFLICT (scope, idem_key) DO NOTHING
        """;

    /// <summary>
    /// Takes over an in-progress key whose lease lapsed, for <c>@owner</c>. Its owner's reservation must be resolved: a
    /// lapsed lease with a pending hold is a call that is still alive (or not yet reaped), and a takeover then could
    /// charge the key twice, once by each call. Keys claimed before owners were recorded have none and go by the lease.
    /// </summary>
    const string TakeOverSql = """
        UPDATE idempotency_keys SET updated_at = @now, owner = @owner
        WHERE scope = @scope AND idem_key = @key AND state = 'in_progress' AND updated_at = @old
          AND (owner IS NULL OR NOT EXISTS (SELECT 1 FROM reservations r WHERE r.id = idempotency_keys.owner AND r.status = 'pending'))
        """;

    /// <summary>
    /// Claims the key for <paramref name="owner"/> (the caller's reservation id), or says what holds it: a finished
    /// request to replay, another body, or a request still running.
    /// </summary>
    public Task<IdempotencyBegin> BeginAsync(string scope, string key, string requestHash, string owner, CancellationToken ct = default) =>
        BeginAsync(scope, key, requestHash, owner, null, ct);

    /// <summary>
    /// As above; when the caller stopped waiting (the request-path timeout, or <paramref name="ct"/>) before the claim
    /// ended, <paramref name="abandoned"/> gets it once it has: it may have claimed the key after all.
    /// </summary>
    public Task<IdempotencyBegin> BeginAsync(string scope, string key, string requestHash, string owner, Action<Task<IdempotencyBegin>>? abandoned, CancellationToken ct = default) =>
        db.WithinRequestTimeoutAsync(t => BeginCoreAsync(scope, key, requestHash, owner, t), abandoned, ct);

    async Task<IdempotencyBegin> BeginCoreAsync(string scope, string key, string requestHash, string owner, CancellationToken ct)
    {
        await using var writer = await db.OpenWriterAsync(ct);
        var c = writer.Connection;
        var now = time.GetUtcNow().ToUnixTimeMilliseconds();
        for (var attempt = 0; attempt < 3; attempt++)
        {
            var inserted = await c.ExecAsync(ClaimSql, new { scope, key, requestHash, owner, now });
            if (inserted == 1)
            {
                return new(IdempotencyState.Started);
            }

            var row = await c.RowAsync<Row>(
                "SELECT request_hash AS RequestHash, state AS State, response_status AS Status, response_body AS Body, content_type AS ContentType, created_at AS CreatedAt, updated_at AS UpdatedAt FROM idempotency_keys WHERE scope = @scope AND idem_key = @key",
                new { scope, key });
            if (row is null)
            {
                continue; // purged between the two statements; try the insert again
            }

            if (row.CreatedAt < now - (long)options.Retention.TotalMilliseconds)
            {
                // Past retention: the key is free again. The conditional delete lets exactly one caller reclaim it.
                await c.ExecAsync("DELETE FROM idempotency_keys WHERE scope = @scope AND idem_key = @key AND created_at = @created",
                    new { scope, key, created = row.CreatedAt });
                continue;
            }

            if (row.RequestHash != requestHash)
            {
                return new(IdempotencyState.KeyReused);
            }

            if (row.State == "complete")
            {
                return new(IdempotencyState.Replay, (int?)row.Status, row.Body, row.ContentType);
            }

            if (row.UpdatedAt < now - (long)options.LeaseTimeout.TotalMilliseconds)
            {
                var taken = await c.ExecAsync(TakeOverSql, new { scope, key, owner, now, old = row.UpdatedAt });
                if (taken == 1)
                {
                    return new(IdempotencyState.Started);
                }
            }

            return new(IdempotencyState.InProgress);
        }

        return new(IdempotencyState.InProgress);
    }

    /// <summary>Stores the response of a started request so later retries replay it.</summary>
    public async Task CompleteAsync(string scope, string key, string owner, int status, string body, string contentType, CancellationToken ct = default)
    {
        var write = Completion(scope, key, owner, status, body, contentType);
        await WriteAsync(write.Sql, write.Parameters, ct);
    }

    /// <summary>
    /// The write <see cref="CompleteAsync"/> makes, for a ledger operation to commit together with its own (the invoke
    /// path stores its response in the finalize transaction). It leaves the key alone when the owner's reservation was
    /// released (voided): a finalize that lands after its call gave up on it and released (PostgreSQL: it committed after
    /// its 503) posts nothing, and its answer, which says what it expected to charge, must not be replayed. The release's
    /// abandon frees the key, and the retry runs once. (A reservation the reaper expired still stores the answer; the
    /// caller rewrites it with what was charged, nothing.)
    /// </summary>
    public Ledger.LedgerSideWrite Completion(string scope, string key, string owner, int status, string body, string contentType) => new(
        """
        UPDATE idempotency_keys SET state = 'complete', response_status = @idemStatus, response_body = @idemBody, content_type = @idemContentType, updated_at = @idemNow
        WHERE scope = @idemScope AND idem_key = @idemKey AND state = 'in_progress' AND owner = @idemOwner
          AND NOT EXISTS (SELECT 1 FROM reservations WHERE id = @idemOwner AND status = 'voided')
        """,
        new { idemScope = scope, idemKey = key, idemOwner = owner, idemStatus = status, idemBody = body, idemContentType = contentType, idemNow = time.GetUtcNow().ToUnixTimeMilliseconds() });

    /// <summary>
    /// Rewrites the stored answer of a completed key: for a call whose finalize found its reservation already resolved,
    /// so that the stored answer, stored with the charge it expected, says what was charged.
    /// </summary>
    public async Task ReplaceAsync(string scope, string key, string owner, int status, string body, string contentType, CancellationToken ct = default)
    {
        await WriteAsync(
            """
            UPDATE idempotency_keys SET response_status = @status, response_body = @body, content_type = @contentType, updated_at = @now
            WHERE scope = @scope AND idem_key = @key AND state = 'complete' AND owner = @owner
            """,
            new { scope, key, owner, status, body, contentType, now = time.GetUtcNow().ToUnixTimeMilliseconds() }, ct);
    }

    /// <summary>How long an in-progress key may go without <see cref="RenewAsync"/> before another request takes it over.</summary>
    public TimeSpan LeaseTimeout => options.LeaseTimeout;

    /// <summary>
    /// Marks a started request as still running, so that no retry takes its key over while it works (C4: a key charges
    /// at most once). False when the key is no longer in progress, or another call took it over.
    /// </summary>
    public async Task<bool> RenewAsync(string scope, string key, string owner, CancellationToken ct = default)
    {
        return await WriteAsync(
            "UPDATE idempotency_keys SET updated_at = @now WHERE scope = @scope AND idem_key = @key AND state = 'in_progress' AND owner = @owner",
            new { scope, key, owner, now = time.GetUtcNow().ToUnixTimeMilliseconds() }, ct) == 1;
    }

    /// <summary>
    /// Forgets a started request that failed before charging, so the client may retry with the same key. Only its owner's
    /// claim goes: a call whose key was taken over must not free the claim of the call that runs it now.
    /// </summary>
    public async Task<bool> AbandonAsync(string scope, string key, string owner, CancellationToken ct = default)
    {
        return await WriteAsync(
            "DELETE FROM idempotency_keys WHERE scope = @scope AND idem_key = @key AND state = 'in_progress' AND owner = @owner", new { scope, key, owner }, ct) == 1;
    }

    /// <summary>One statement through the writer, within the request-path timeout (<see cref="Database.WithinRequestTimeoutAsync{T}"/>).</summary>
    Task<int> WriteAsync(string sql, object args, CancellationToken ct) =>
        db.WithinRequestTimeoutAsync(async t =>
        {
            await using var writer = await db.OpenWriterAsync(t);
            return await writer.Connection.ExecAsync(sql, args);
        }, ct);

    /// <summary>Keys one purge statement deletes.</summary>
    public const int PurgeBatch = 1_000;

    /// <summary>
    /// Deletes keys past retention, <see cref="PurgeBatch"/> per statement; returns how many. On SQLite one statement
    /// for an hour of keys at 100 invokes/s (360,000 rows with their stored responses) holds the file's write lock for
    /// ~1.8 s, and every reservation waits behind it; in batches the ledger's writes queue between them.
    /// </summary>
    public Task<int> PurgeAsync(CancellationToken ct = default) =>
        db.DeleteInBatchesAsync("idempotency_keys", "scope, idem_key", "created_at < @cutoff",
            new { cutoff = (time.GetUtcNow() - options.Retention).ToUnixTimeMilliseconds() }, PurgeBatch, ct);

    sealed class Row
    {
        public string RequestHash { get; set; } = "";
        public string State { get; set; } = "";
        public int? Status { get; set; }
        public string? Body { get; set; }
        public string? ContentType { get; set; }
        public long CreatedAt { get; set; }
        public long UpdatedAt { get; set; }
    }
}
