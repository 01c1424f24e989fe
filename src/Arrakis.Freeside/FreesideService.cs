using Arrakis.Freeside.Identity;
using Arrakis.Freeside.Payments;
using Arrakis.Shared.Hosting;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Freeside;

/// <summary>freeside, the community gateway. Reads as a table of contents: one Add/Map pair per feature folder.</summary>
public static class FreesideService
{
    public const string Name = "freeside";
    public const string Issuer = "arrakis";

    public static async Task<WebApplication> CreateAsync(string[] args, Action<WebApplicationBuilder>? configure = null)
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args, ApplicationName = typeof(FreesideService).Assembly.GetName().Name });
        ServiceEndpoints.Listen(builder, ServiceEndpoints.FreesidePort);
        builder.AddServiceDefaults(Name);
        builder.AddKeyring();
        builder.AddIdentity();
        builder.AddPayments();
        configure?.Invoke(builder);

        var app = builder.Build();
        app.UseServiceDefaults();
        app.MapHealth("/health", Name);
        app.MapJwksApi();
        app.MapIdentityApi();
        app.MapPaymentsApi();
        await app.InitializeStorageAsync(typeof(FreesideService).Assembly);
        return app;
    }
}
