using Arrakis.Dixie.Identity;
using Arrakis.Dixie.Reputation;
using Arrakis.Shared.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Dixie;

/// <summary>dixie, the reputation oracle. One Add/Map pair per feature folder.</summary>
public static class DixieService
{
    public const string Name = "dixie";

    public static async Task<WebApplication> CreateAsync(string[] args, Action<WebApplicationBuilder>? configure = null)
    {
        var builder = WebApplication.CreateBuilder(ServiceDefaults.HostOptions(args, typeof(DixieService).Assembly));
        ServiceEndpoints.Listen(builder, ServiceEndpoints.DixiePort);
        builder.AddServiceDefaults(Name);
        builder.AddIdentity();
        builder.AddReputation();
        configure?.Invoke(builder);

        var app = builder.Build();
        app.UseServiceDefaults();
        app.MapHealth("/api/health", Name);
        app.MapLiveness("/health/live", Name);
        app.MapIdentityApi();
        app.MapReputationApi();
        await app.InitializeStorageAsync(typeof(DixieService).Assembly);
        // Agents created by replicas that predate the kept count (during a rolling upgrade) were never counted.
        await app.Services.GetRequiredService<ReputationStore>().RecountAgentsAsync(CancellationToken.None);
        // Subscribes to cache invalidations before taking traffic, not on the first request (under a burst).
        _ = app.Services.GetRequiredService<ReputationCache>();
        return app;
    }
}
