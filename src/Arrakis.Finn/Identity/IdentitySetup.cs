using Arrakis.Shared.Hosting;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Finn.Identity;

public static class IdentitySetup
{
    /// <summary>Tokens freeside mints for finn: iss <c>arrakis</c>, aud <c>loa-finn</c>, verified against freeside's JWKS.</summary>
    public const string FreesidePolicy = "freeside";

    public const string FreesideIssuer = "arrakis";
    public const string Audience = "loa-finn";
    public const string DixieAudience = "loa-dixie";
    public const string DixieClient = "dixie";

    public static WebApplicationBuilder AddIdentity(this WebApplicationBuilder builder)
    {
        var jwks = builder.Configuration["Freeside:JwksUrl"] ?? ServiceEndpoints.FreesideUrl(builder.Configuration) + "/.well-known/jwks.json";
        builder.Services.AddSingleton(sp => new FreesideKeys(sp.RemoteKeys(jwks)));
        builder.Services.AddTokenPolicy(FreesidePolicy, sp => new TokenPolicy(
            FreesidePolicy,
            new Dictionary<string, IKeySource> { [FreesideIssuer] = sp.GetRequiredService<FreesideKeys>().Source },
            [Audience],
            TimeSpan.FromMinutes(10)));
        builder.Services.AddHttpClient(DixieClient, (sp, c) =>
        {
            c.BaseAddress = new Uri(ServiceEndpoints.DixieUrl(sp.GetRequiredService<IConfiguration>()) + "/");
            c.Timeout = TimeSpan.FromSeconds(10);
        });
        return builder;
    }
}

/// <summary>freeside's published keys, fetched from its JWKS.</summary>
public sealed record FreesideKeys(RemoteKeySource Source);
