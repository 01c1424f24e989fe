using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Arrakis.Freeside.Idempotency;

public static partial class IdempotencySetup
{
    public static WebApplicationBuilder AddIdempotency(this WebApplicationBuilder builder)
    {
        builder.Services.AddOptions<IdempotencyOptions>().BindConfiguration(IdempotencyOptions.Section).ValidateDataAnnotations().ValidateOnStart();
        builder.Services.AddSingleton(sp => sp.GetRequiredService<IOptions<IdempotencyOptions>>().Value);
        builder.Services.AddSingleton<IdempotencyStore>();
        builder.Services.AddHostedService<IdempotencyPurger>();
        return builder;
    }

    /// <summary>Deletes keys past retention every 5 minutes, so each pass has a few minutes of keys to delete.</summary>
    sealed partial class IdempotencyPurger(IdempotencyStore store, TimeProvider time, ILogger<IdempotencyPurger> logger) : BackgroundService
    {
        public static readonly TimeSpan Every = TimeSpan.FromMinutes(5);

        protected override async Task ExecuteAsync(CancellationToken stoppingToken)
        {
            using var timer = new PeriodicTimer(Every, time);
            do
            {
                try
                {
                    if (await store.PurgeAsync(stoppingToken) is > 0 and var purged)
                    {
                        LogPurged(purged);
                    }
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    // The next tick retries; a missed purge only keeps keys a little longer.
                    LogPurgeFailed(ex.Message);
                }
            }
            while (await timer.WaitForNextTickAsync(stoppingToken));
        }

        [LoggerMessage(EventId = 5301, EventName = "IDEMPOTENCY_PURGED", Level = LogLevel.Information, Message = "Deleted {Count} idempotency keys past retention")]
        partial void LogPurged(int count);

        [LoggerMessage(EventId = 5302, EventName = "IDEMPOTENCY_PURGE_FAILED", Level = LogLevel.Warning, Message = "Idempotency key purge failed; the next pass retries: {Error}")]
        partial void LogPurgeFailed(string error);
    }
}
