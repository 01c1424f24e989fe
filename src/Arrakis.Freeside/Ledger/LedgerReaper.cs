using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Arrakis.Freeside.Ledger;

/// <summary>Expires reservations past their TTL and what is left of expired credit lots.</summary>
internal sealed partial class LedgerReaper(Ledger ledger, LedgerOptions options, TimeProvider time, ILogger<LedgerReaper> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(options.ReaperInterval, time);
        do
        {
            try
            {
                var reservations = await ledger.ExpireDueAsync(ct: stoppingToken);
                var lots = await ledger.ExpireLotsAsync(ct: stoppingToken);
                if (reservations + lots > 0)
                {
                    LogReaped(logger, reservations, lots);
                }
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                LogFailed(logger, ex);
            }
        }
        while (await timer.WaitForNextTickAsync(stoppingToken));
    }

    [LoggerMessage(EventId = 3101, EventName = "RESERVATIONS_EXPIRED", Level = LogLevel.Information, Message = "Expired {Reservations} reservations and {Lots} credit lots")]
    static partial void LogReaped(ILogger logger, int reservations, int lots);

    [LoggerMessage(EventId = 3102, EventName = "REAPER_FAILED", Level = LogLevel.Warning, Message = "The ledger reaper failed; it retries on the next tick")]
    static partial void LogFailed(ILogger logger, Exception ex);
}
