using System.Data.Common;
using Arrakis.Shared.Storage;
using Dapper;

namespace Arrakis.Freeside.Quality;

/// <summary>Configuration section <c>Quality</c>: how the outbox deliverer polls and backs off.</summary>
public sealed class QualityOptions
{
    public const string Section = "Quality";

    /// <summary>Idle poll interval in milliseconds (an enqueue also wakes the deliverer at once). Default 250.</summary>
    public int PollMilliseconds { get; set; } = 250;

    /// <summary>First retry delay in milliseconds; doubles per attempt with ±50 % jitter. Default 250.</summary>
    public int BaseBackoffMilliseconds { get; set; } = 250;

    /// <summary>Longest retry delay in milliseconds. Default 30 000.</summary>
    public int MaxBackoffMilliseconds { get; set; } = 30_000;

    /// <summary>Per-attempt timeout for the dixie call in milliseconds. Default 5 000.</summary>
    public int DeliveryTimeoutMilliseconds { get; set; } = 5_000;

    /// <summary>Rows sent per batch. Default 50.</summary>
    public int BatchSize { get; set; } = 50;

    /// <summary>
    /// Hours a delivered event stays in the outbox (for a look back) before the deliverer deletes it; dixie holds the
    /// event itself. 0 keeps delivered events forever. Default 168 (7 days). Events not delivered are never deleted.
    /// </summary>
    public int DeliveredRetentionHours { get; set; } = 168;

    public void Validate()
    {
        if (PollMilliseconds is < 10 or > 60_000 || BaseBackoffMilliseconds < 1 || MaxBackoffMilliseconds < BaseBackoffMilliseconds
            || DeliveryTimeoutMilliseconds < 50 || BatchSize is < 1 or > 1000 || DeliveredRetentionHours < 0)
        {
            throw new InvalidOperationException(
                "Quality options are out of range: PollMilliseconds 10..60000, BaseBackoffMilliseconds ≥ 1, MaxBackoffMilliseconds ≥ base, DeliveryTimeoutMilliseconds ≥ 50, BatchSize 1..1000, DeliveredRetentionHours ≥ 0.");
        }
    }
}

public sealed record OutboxRow(string event_id, string routing_key, string payload, long attempts);

/// <summary>The quality outbox table: enqueue in the caller's transaction, then claim, mark delivered or reschedule.</summary>
public sealed class QualityOutbox(Database database)
{
    /// <summary>Queues the event; false when an event with this id is already there (an idempotent retry), which is left as it is.</summary>
    public static async Task<bool> EnqueueAsync(DbConnection connection, DbTransaction tx, string eventId, string routingKey, string payload, string? submittedBy, long nowMs, CancellationToken ct) =>
        await connection.ExecuteAsync(new CommandDefinition(
            """
            INSERT INTO quality_outbox (event_id, routing_key, payload, submitted_by, status, attempts, created_at, next_attempt_at)
            VALUES (@eventId, @routingKey, @payload, @submittedBy, 'pending', 0, @nowMs, @nowMs)
            ON CONFLICT (event_id) DO NOTHING
            """,
            new { eventId, routingKey, payload, submittedBy, nowMs }, tx, cancellationToken: ct)) == 1;

    /// <summary>The payload queued under <paramref name="eventId"/>, or null when there is none (or it was pruned).</summary>
    public static Task<string?> PayloadAsync(DbConnection connection, DbTransaction tx, string eventId, CancellationToken ct) =>
        connection.QuerySingleOrDefaultAsync<string?>(new CommandDefinition(
            "SELECT payload FROM quality_outbox WHERE event_id = @eventId", new { eventId }, tx, cancellationToken: ct));

    public async Task<IReadOnlyList<OutboxRow>> DueAsync(long nowMs, int limit, CancellationToken ct)
    {
        await using var connection = await database.OpenAsync(ct);
        var rows = await connection.QueryAsync<OutboxRow>(new CommandDefinition(
            "SELECT event_id, routing_key, payload, attempts FROM quality_outbox WHERE status = 'pending' AND next_attempt_at <= @nowMs ORDER BY created_at, event_id LIMIT @limit",
            new { nowMs, limit }, cancellationToken: ct));
        return rows.ToList();
    }

    public async Task MarkDeliveredAsync(string eventId, long nowMs, CancellationToken ct)
    {
        await using var connection = await database.OpenAsync(ct);
        await connection.ExecuteAsync(new CommandDefinition(
            // next_attempt_at = delivered_at, so the (status, next_attempt_at) index also finds delivered rows by age.
            "UPDATE quality_outbox SET status = 'delivered', delivered_at = @nowMs, next_attempt_at = @nowMs, attempts = attempts + 1, last_error = NULL WHERE event_id = @eventId AND status = 'pending'",
            new { eventId, nowMs }, cancellationToken: ct));
    }

    /// <summary>Rows one prune statement deletes.</summary>
    public const int PruneBatch = 1_000;

    /// <summary>Deletes the events delivered before <paramref name="deliveredBeforeMs"/>, <see cref="PruneBatch"/> per statement; returns how many.</summary>
    public Task<int> PruneDeliveredAsync(long deliveredBeforeMs, CancellationToken ct) =>
        database.DeleteInBatchesAsync("quality_outbox", "event_id", "status = 'delivered' AND next_attempt_at < @deliveredBeforeMs",
            new { deliveredBeforeMs }, PruneBatch, ct);

    public async Task RescheduleAsync(string eventId, long nextAttemptAtMs, string error, bool dead, CancellationToken ct)
    {
        await using var connection = await database.OpenAsync(ct);
        await connection.ExecuteAsync(new CommandDefinition(
            "UPDATE quality_outbox SET status = @status, attempts = attempts + 1, next_attempt_at = @nextAttemptAtMs, last_error = @error WHERE event_id = @eventId AND status = 'pending'",
            new { eventId, nextAttemptAtMs, error = error.Length > 500 ? error[..500] : error, status = dead ? "dead" : "pending" }, cancellationToken: ct));
    }

    // A settable class, not a positional record: on SQLite an empty GROUP BY reports untyped (BLOB) columns, which no constructor matches.
    sealed class CountRow
    {
        public string status { get; set; } = "";

        public long n { get; set; }

        public long? oldest { get; set; }
    }

    public sealed record Counts(long Pending, long Dead, long? OldestPendingAtMs);

    /// <summary>
    /// Counts the events not delivered, through the (status, next_attempt_at) index: the health check runs this, so it
    /// costs in proportion to the backlog, never to the delivered history.
    /// </summary>
    public async Task<Counts> CountsAsync(CancellationToken ct)
    {
        await using var connection = await database.OpenAsync(ct);
        var rows = (await connection.QueryAsync<CountRow>(new CommandDefinition(
            "SELECT status, COUNT(*) AS n, MIN(created_at) AS oldest FROM quality_outbox WHERE status IN ('pending', 'dead') GROUP BY status",
            cancellationToken: ct))).ToList();
        long Of(string s) => rows.FirstOrDefault(r => r.status == s)?.n ?? 0;
        return new Counts(Of("pending"), Of("dead"), rows.FirstOrDefault(r => r.status == "pending")?.oldest);
    }
}
