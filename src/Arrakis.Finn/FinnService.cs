using Arrakis.Finn.Identity;
using Arrakis.Finn.Inference;
using Arrakis.Finn.Routing;
using Arrakis.Shared.Hosting;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;

namespace Arrakis.Finn;

/// <summary>finn, the inference runtime (internal). One Add/Map pair per feature folder.</summary>
public static class FinnService
{
    public const string Name = "finn";
    public const string Issuer = "loa-finn";

    public static async Task<WebApplication> CreateAsync(string[] args, Action<WebApplicationBuilder>? configure = null)
    {
        var builder = WebApplication.CreateBuilder(ServiceDefaults.HostOptions(args, typeof(FinnService).Assembly));
        ServiceEndpoints.Listen(builder, ServiceEndpoints.FinnPort);
        builder.AddServiceDefaults(Name);
        builder.AddKeyring();
        builder.AddIdentity();
        builder.AddInference();
        builder.AddReputationRouting();
        configure?.Invoke(builder);

        var app = builder.Build();
        app.UseServiceDefaults();
        app.MapHealth("/health", Name);
        app.MapLiveness("/health/live", Name);
        app.MapJwksApi();
        app.MapIdentityApi();
        app.MapInferenceApi();
        app.MapRoutingApi();
        await app.InitializeStorageAsync(typeof(FinnService).Assembly);
        return app;
    }
}
