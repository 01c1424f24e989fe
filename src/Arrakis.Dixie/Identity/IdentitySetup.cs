using Arrakis.Shared.Hosting;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Dixie.Identity;

public static class IdentitySetup
{
    /// <summary>Service tokens for dixie: aud <c>loa-dixie</c>, from finn (its JWKS) or from freeside (its JWKS).</summary>
    public const string ServicePolicy = "service";

    public const string Audience = "loa-dixie";
    public const string FinnIssuer = "loa-finn";
    public const string FreesideIssuer = "arrakis";

    public static WebApplicationBuilder AddIdentity(this WebApplicationBuilder builder)
    {
        var config = builder.Configuration;
        var finnJwks = config["Finn:JwksUrl"] ?? ServiceEndpoints.FinnUrl(config) + "/.well-known/jwks.json";
        var freesideJwks = config["Freeside:JwksUrl"] ?? ServiceEndpoints.FreesideUrl(config) + "/.well-known/jwks.json";
        builder.Services.AddSingleton(sp => new IssuerKeys(sp.RemoteKeys(finnJwks), sp.RemoteKeys(freesideJwks)));
        builder.Services.AddTokenPolicy(ServicePolicy, sp =>
        {
            var keys = sp.GetRequiredService<IssuerKeys>();
            return new TokenPolicy(
                ServicePolicy,
                new Dictionary<string, IKeySource> { [FinnIssuer] = keys.Finn, [FreesideIssuer] = keys.Freeside },
                [Audience],
                TimeSpan.FromMinutes(10));
        });
        builder.Services.AddHttpClient("finn-health", (sp, c) =>
        {
            c.BaseAddress = new Uri(ServiceEndpoints.FinnUrl(sp.GetRequiredService<IConfiguration>()) + "/");
            c.Timeout = TimeSpan.FromSeconds(3);
        });
        builder.Services.AddSingleton<IHealthContributor, FinnHealth>();
        return builder;
    }
}

public sealed record IssuerKeys(RemoteKeySource Finn, RemoteKeySource Freeside);

/// <summary>
/// dixie is unhealthy when finn's /health cannot be reached: the gate's only view of finn. finn is upstream, so dixie
/// still answers 200 (with status unhealthy), as the reference dixie does.
/// </summary>
public sealed class FinnHealth(IHttpClientFactory clients) : IHealthContributor
{
    public string Name => "finn";

    public bool IsUpstream => true;

    public async Task<HealthCheckResult> CheckAsync(CancellationToken ct)
    {
        try
        {
            using var response = await clients.CreateClient("finn-health").GetAsync("health", ct);
            return response.IsSuccessStatusCode
                ? new HealthCheckResult(HealthState.Healthy)
                : new HealthCheckResult(HealthState.Unhealthy, $"finn_unhealthy ({(int)response.StatusCode})");
        }
        catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException)
        {
            return new HealthCheckResult(HealthState.Unhealthy, "finn_unreachable");
        }
    }
}
