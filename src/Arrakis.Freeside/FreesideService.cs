using Arrakis.Freeside.Audit;
using Arrakis.Freeside.Budgets;
using Arrakis.Freeside.Communities;
using Arrakis.Freeside.Identity;
using Arrakis.Freeside.Invoke;
using Arrakis.Freeside.Quality;
using Arrakis.Freeside.Idempotency;
using Arrakis.Freeside.Ledger;
using Arrakis.Freeside.RateLimiting;
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
        var builder = WebApplication.CreateBuilder(ServiceDefaults.HostOptions(args, typeof(FreesideService).Assembly));
        ServiceEndpoints.Listen(builder, ServiceEndpoints.FreesidePort);
        builder.AddServiceDefaults(Name);
        builder.AddKeyring(CommunitiesSetup.MaxOperatorTokenLifetime); // operator tokens outlive user tokens
        builder.AddIdentity();
        builder.AddQuality();
        builder.AddCommunities();
        builder.AddLedger();
        builder.AddBudgets();
        builder.AddIdempotency();
        builder.AddRateLimits();
        builder.AddAudit();
        builder.AddInvoke();
        builder.AddPayments();
        configure?.Invoke(builder);

        var app = builder.Build();
        app.Use(InvokeApi.LogAnsweredBeforeTheHandlerAsync); // ahead of the token check: a refused invoke logs its line too
        app.UseServiceDefaults();
        app.Services.GetRequiredService<Payments.PaymentMetrics>(); // its counters exist from the first scrape
        app.MapHealth("/health", Name);
        app.MapLiveness("/health/live", Name);
        app.MapJwksApi();
        app.MapIdentityApi();
        app.MapQualityApi();
        app.MapCommunitiesApi();
        app.MapBudgetsApi();
        app.MapAuditApi();
        app.MapInvokeApi();
        app.MapPaymentsApi();
        await app.InitializeStorageAsync(typeof(FreesideService).Assembly);
        return app;
    }
}
