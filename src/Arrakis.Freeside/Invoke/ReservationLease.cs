using Microsoft.Extensions.Logging;

namespace Arrakis.Freeside.Invoke;

/// <summary>
/// Keeps a call that is still running from losing its hold: every third of the reservation TTL (or of the idempotency
/// key's lease, when shorter) it renews the reservation, so the reaper does not expire it, and the call's idempotency key,
/// so a retry with the same key gets 409 REQUEST_IN_PROGRESS instead of taking the key over and charging it a second
/// time. A call longer than the TTL (a long stream, a slow model) is then still finalized at its metered cost. If
/// freeside dies, renewals stop: the reaper releases the hold within one TTL, and the key can be taken over after its
/// lease. A call shorter than a third of the period (nearly all of them) costs one timer and no write.
/// </summary>
public sealed partial class ReservationLease : IDisposable
{
    readonly Ledger.Ledger _ledger;
    readonly string _reservationId;
    readonly TimeSpan _ttl;
    readonly ILogger _logger;
    readonly ITimer _timer;
    readonly Func<Task<bool>>? _renewKey;
    int _renewing;
    volatile bool _disposed;

    public ReservationLease(Ledger.Ledger ledger, string reservationId, TimeSpan ttl, TimeProvider time, ILogger logger,
        Func<Task<bool>>? renewKey = null, TimeSpan? keyLease = null)
    {
        _ledger = ledger;
        _reservationId = reservationId;
        _ttl = ttl;
        _logger = logger;
        _renewKey = renewKey;
        var period = (keyLease is { } lease && lease < ttl ? lease : ttl) / 3;
        _timer = time.CreateTimer(static state => ((ReservationLease)state!).Tick(), this, period, period);
    }

    void Tick()
    {
        if (_disposed || Interlocked.Exchange(ref _renewing, 1) == 1)
        {
            return; // stopped, or the previous renewal is still running
        }

        _ = RenewAsync();
    }

    async Task RenewAsync()
    {
        try
        {
            if (!await _ledger.RenewAsync(_reservationId, _ttl) && !_disposed)
            {
                LogLost(_logger, _reservationId);
                _disposed = true;
                _timer.Dispose();
                return;
            }

            if (_renewKey is not null && !_disposed)
            {
                await _renewKey();
            }
        }
        catch (Exception ex)
        {
            LogFailed(_logger, _reservationId, ex); // the next tick tries again; the TTL outlasts two more ticks
        }
        finally
        {
            Volatile.Write(ref _renewing, 0);
        }
    }

    public void Dispose()
    {
        _disposed = true;
        _timer.Dispose();
    }

    [LoggerMessage(EventId = 3111, EventName = "RESERVATION_LEASE_LOST", Level = LogLevel.Warning,
        Message = "Reservation {ReservationId} is no longer pending while its call still runs; the call's charge will not post")]
    static partial void LogLost(ILogger logger, string reservationId);

    [LoggerMessage(EventId = 3112, EventName = "RESERVATION_RENEW_FAILED", Level = LogLevel.Warning,
        Message = "Renewing reservation {ReservationId} failed; retrying on the next tick")]
    static partial void LogFailed(ILogger logger, string reservationId, Exception ex);
}
