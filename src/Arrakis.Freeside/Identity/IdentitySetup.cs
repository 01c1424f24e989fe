using Arrakis.Shared.Hosting;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Freeside.Identity;

public static class IdentitySetup
{
    /// <summary>User tokens: iss and aud <c>arrakis</c>, signed by one of our own published keys, living at most <c>Keyring:MaxTokenLifetime</c> (15 min by default; a retired key stays published at least this long).</summary>
    public const string UserPolicy = "user";

    public const string FinnAudience = "loa-finn";
    public const string DixieAudience = "loa-dixie";
    public const string FinnClient = "finn";
    public const string DixieClient = "dixie";

    /// <summary>How long freeside waits for one finn call (the finn HTTP client's timeout); x402 recovery waits longer than a paid call can take.</summary>
    public static readonly TimeSpan FinnTimeout = TimeSpan.FromSeconds(60);

    /// <summary>
    /// How long a finn stream may stay silent (<c>Services:FinnStreamIdleTimeout</c>) before freeside gives it up. The
    /// client's timeout covers only the wait for finn's headers, not its body; finn writes a keepalive every 15 s while it
    /// works, so a minute without a byte means finn hung or the network dropped it.
    /// </summary>
    public static TimeSpan FinnStreamIdleTimeout(Microsoft.Extensions.Configuration.IConfiguration configuration) =>
        configuration.GetValue<TimeSpan?>("Services:FinnStreamIdleTimeout") is { } t && t > TimeSpan.Zero ? t : FinnTimeout;

    public static WebApplicationBuilder AddIdentity(this WebApplicationBuilder builder)
    {
        builder.Services.AddTokenPolicy(UserPolicy, sp => new TokenPolicy(
            UserPolicy,
            new Dictionary<string, IKeySource> { [FreesideService.Issuer] = sp.GetRequiredService<LocalKeySource>() },
            [FreesideService.Issuer],
            sp.GetRequiredService<KeyringOptions>().MaxTokenLifetime));
        builder.Services.AddHttpClient(FinnClient, (sp, c) =>
        {
            c.BaseAddress = new Uri(ServiceEndpoints.FinnUrl(sp.GetRequiredService<IConfiguration>()) + "/");
            c.Timeout = FinnTimeout;
        });
        builder.Services.AddHttpClient(DixieClient, (sp, c) =>
        {
            c.BaseAddress = new Uri(ServiceEndpoints.DixieUrl(sp.GetRequiredService<IConfiguration>()) + "/");
            c.Timeout = TimeSpan.FromSeconds(10);
        });
        return builder;
    }
}
