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
/// default), and the hold kept the budget until the reaper's TTL. Such calls are remembered here and released every
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

    /// <summary>Remembers a call whose release failed because the database could not be reached.</summary>
    public void Add(Admitted a)
    {
        if (_pending.Count < Capacity)
        {
            _pending.TryAdd(a.ReservationId, new Pending(a.ReservationId, a.CommunityId, a.IdempotencyKey, a.TraceId, time.GetUtcNow()));
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
            if (time.GetUtcNow() - call.Since > idempotency.LeaseTimeout)
            {
                _pending.TryRemove(call.ReservationId, out _); // the lease frees the key now, and the reaper freed the hold long ago
                continue;
            }

            try
            {
                await ledger.ReleaseAsync(call.ReservationId, ct);
                await idempotency.AbandonAsync(call.CommunityId, call.IdempotencyKey, call.ReservationId, ct);
                _pending.TryRemove(call.ReservationId, out _);
                released++;
                LogReleased(call.ReservationId, call.IdempotencyKey, call.TraceId);
            }
            catch (Exception ex) when (!ct.IsCancellationRequested)
            {
                if (ServiceDefaults.UnavailableDependencyOf(ex) is not null)
                {
                    break; // still unreachable: the next tick tries again
                }

                _pending.TryRemove(call.ReservationId, out _);
                logger.ReleaseFailed("reservation", call.ReservationId, call.TraceId, ex);
            }
        }

        return released;
    }

    [LoggerMessage(EventId = 4006, EventName = "INVOKE_RELEASE_RETRIED", Level = LogLevel.Information,
        Message = "Released reservation {ReservationId} and freed idempotency key {IdempotencyKey} once the database answered again trace={TraceId}")]
    partial void LogReleased(string reservationId, string idempotencyKey, string traceId);
}
