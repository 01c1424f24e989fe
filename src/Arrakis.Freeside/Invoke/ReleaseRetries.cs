using System.Collections.Concurrent;
using Arrakis.Freeside.Idempotency;
using Arrakis.Shared.Hosting;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Arrakis.Freeside.Invoke;

/// <summary>
/// Finishes the releases a database outage stopped. A call that ends while the database is unreachable (its finalize
/// failed, finn failed, or its client left) cannot release its hold or free its idempotency key, yet its answer tells the
/// client to retry with the same key: the retry got 409 REQUEST_IN_PROGRESS until the key's lease lapsed (10 min by
/// default), and the hold kept the budget until the reaper's TTL. The same holds for a reserve (or key claim) that
/// freeside stopped waiting for (503 after <c>Database__RequestTimeout</c>, or its client left) and that committed later
/// when the database answered again. Such calls are remembered here and released every
/// <see cref="Interval"/> once the database answers. Each step is a no-op if something else got there first: a reservation
/// resolves once (C4) and only the key's owner frees it. A call is forgotten after the key's lease, past
/// <see cref="Capacity"/>, or when freeside stops: the reaper and the lease then free it, as after a crash.
/// </summary>
public sealed partial class ReleaseRetries(Ledger.Ledger ledger, IdempotencyStore idempotency, TimeProvider time, ILogger<ReleaseRetries> logger)
    : BackgroundService
{
    public static readonly TimeSpan Interval = TimeSpan.FromSeconds(1);

    /// <summary>Calls remembered at most; more during a long outage are left to the reaper and the lease.</summary>
    public const int Capacity = 10_000;

    readonly ConcurrentDictionary<string, Pending> _pending = new(StringComparer.Ordinal);

    sealed record Pending(string ReservationId, string CommunityId, string IdempotencyKey, string TraceId, DateTimeOffset Since);

    /// <summary>Calls waiting for their release.</summary>
    public int Count => _pending.Count;

    /// <summary>
    /// Remembers a call whose release failed because the database could not be reached, or whose reserve may have
    /// committed after it was answered. Adding it again (its late reserve ended) has it released once more.
    /// </summary>
    public void Add(Admitted a)
    {
        if (_pending.Count < Capacity)
        {
            _pending[a.ReservationId] = new Pending(a.ReservationId, a.CommunityId, a.IdempotencyKey, a.TraceId, time.GetUtcNow());
        }
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(Interval, time);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                await RetryOnceAsync(stoppingToken);
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    /// <summary>Releases what it can; stops at the first call the database still refuses. Returns how many went through.</summary>
    public async Task<int> RetryOnceAsync(CancellationToken ct)
    {
        var released = 0;
        foreach (var call in _pending.Values)
        {
            // Only this entry goes: one added again meanwhile (its late reserve just ended) stays for the next tick.
            var entry = KeyValuePair.Create(call.ReservationId, call);
            if (time.GetUtcNow() - call.Since > idempotency.LeaseTimeout)
            {
                _pending.TryRemove(entry); // the lease frees the key now, and the reaper freed the hold long ago
                continue;
            }

            try
            {
                var release = await ledger.ReleaseAsync(call.ReservationId, ct);
                var freed = await idempotency.AbandonAsync(call.CommunityId, call.IdempotencyKey, call.ReservationId, ct);
                _pending.TryRemove(entry);
                released++;
                if (release.Status == Ledger.ReleaseStatus.Released || freed)
                {
                    LogReleased(call.ReservationId, call.IdempotencyKey, call.TraceId);
                }
            }
            catch (Exception ex) when (!ct.IsCancellationRequested)
            {
                if (ServiceDefaults.UnavailableDependencyOf(ex) is not null)
                {
                    break; // still unreachable: the next tick tries again
                }

                _pending.TryRemove(entry);
                logger.ReleaseFailed("reservation", call.ReservationId, call.TraceId, ex);
            }
        }

        return released;
    }

    [LoggerMessage(EventId = 4006, EventName = "INVOKE_RELEASE_RETRIED", Level = LogLevel.Information,
        Message = "Released reservation {ReservationId} and freed idempotency key {IdempotencyKey} once the database answered again trace={TraceId}")]
    partial void LogReleased(string reservationId, string idempotencyKey, string traceId);
}
