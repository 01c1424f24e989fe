using Arrakis.Freeside.Communities;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Arrakis.Freeside.Audit;

public static class AuditApi
{
    public static WebApplicationBuilder AddAudit(this WebApplicationBuilder builder)
    {
        builder.Services.AddSingleton<AuditMetrics>();
        builder.Services.AddSingleton<ConservationAudit>();
        builder.Services.AddHostedService<AuditTimer>();
        return builder;
    }

    public static IEndpointRouteBuilder MapAuditApi(this IEndpointRouteBuilder app)
    {
        app.MapGet("/api/v1/admin/conservation", async (ConservationAudit audit, CancellationToken ct) => TypedResults.Ok(await audit.RunAsync(ct)))
            .WithTags("Admin").RequireOperator();
        return app;
    }

    /// <summary>Runs the audit every <c>Audit:Interval</c> (default 60 s).</summary>
    sealed class AuditTimer(ConservationAudit audit, TimeProvider time, IConfiguration configuration, ILogger<AuditTimer> logger) : BackgroundService
    {
        protected override async Task ExecuteAsync(CancellationToken stoppingToken)
        {
            var interval = configuration.GetValue("Audit:Interval", TimeSpan.FromSeconds(60));
            using var timer = new PeriodicTimer(interval, time);
            // Audit shortly after start-up (after `loa up` has seeded) so the budget gauges exist from the first minute.
            try
            {
                await Task.Delay(TimeSpan.FromSeconds(5), time, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            var first = true;
            while (first || await timer.WaitForNextTickAsync(stoppingToken))
            {
                first = false;
                try
                {
                    await audit.RunAsync(stoppingToken);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    logger.LogWarning(ex, "The conservation audit could not run; it retries on the next tick");
                }
            }
        }
    }
}
