using Microsoft.Extensions.Logging;

namespace Arrakis.Freeside.Invoke;

/// <summary>
/// Keeps the reservation of a call that is still running from expiring: renews it every third of the reservation TTL
/// until disposed. A call longer than the TTL (a long stream, a slow model) is then still finalized at its metered cost
/// instead of losing its hold to the reaper. If freeside dies, renewals stop and the reaper releases the hold within one
/// TTL of the last renewal.
/// </summary>
public sealed partial class ReservationLease : IAsyncDisposable
{
    readonly CancellationTokenSource _stop = new();
    readonly Task _loop;

    public ReservationLease(Ledger.Ledger ledger, string reservationId, TimeSpan ttl, TimeProvider time, ILogger logger)
    {
        _loop = RenewAsync(ledger, reservationId, ttl, time, logger);
    }

    async Task RenewAsync(Ledger.Ledger ledger, string reservationId, TimeSpan ttl, TimeProvider time, ILogger logger)
    {
        await Task.Yield();
        using var timer = new PeriodicTimer(ttl / 3, time);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token))
            {
                try
                {
                    if (!await ledger.RenewAsync(reservationId, ttl, _stop.Token))
                    {
                        LogLost(logger, reservationId);
                        return;
                    }
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    LogFailed(logger, reservationId, ex); // the next tick tries again; one TTL holds two more
                }
            }
        }
        catch (OperationCanceledException) when (_stop.IsCancellationRequested)
        {
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        await _loop;
        _stop.Dispose();
    }

    [LoggerMessage(EventId = 3111, EventName = "RESERVATION_LEASE_LOST", Level = LogLevel.Warning,
        Message = "Reservation {ReservationId} is no longer pending while its call still runs; the call's charge will not post")]
    static partial void LogLost(ILogger logger, string reservationId);

    [LoggerMessage(EventId = 3112, EventName = "RESERVATION_RENEW_FAILED", Level = LogLevel.Warning,
        Message = "Renewing reservation {ReservationId} failed; retrying on the next tick")]
    static partial void LogFailed(ILogger logger, string reservationId, Exception ex);
}
