using Microsoft.Extensions.Logging;

namespace Arrakis.Freeside.Invoke;

/// <summary>
/// Keeps the reservation of a call that is still running from expiring: renews it every third of the reservation TTL
/// until disposed. A call longer than the TTL (a long stream, a slow model) is then still finalized at its metered cost
/// instead of losing its hold to the reaper. If freeside dies, renewals stop and the reaper releases the hold within one
/// TTL of the last renewal. A call shorter than a third of the TTL (nearly all of them) costs one timer and no write.
/// </summary>
public sealed partial class ReservationLease : IDisposable
{
    readonly Ledger.Ledger _ledger;
    readonly string _reservationId;
    readonly TimeSpan _ttl;
    readonly ILogger _logger;
    readonly ITimer _timer;
    int _renewing;
    volatile bool _disposed;

    public ReservationLease(Ledger.Ledger ledger, string reservationId, TimeSpan ttl, TimeProvider time, ILogger logger)
    {
        _ledger = ledger;
        _reservationId = reservationId;
        _ttl = ttl;
        _logger = logger;
        _timer = time.CreateTimer(static state => ((ReservationLease)state!).Tick(), this, ttl / 3, ttl / 3);
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
