using Arrakis.Shared.Http;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Freeside.Communities;

public static class CommunitiesSetup
{
    /// <summary>Operator tokens: iss <c>arrakis</c>, aud <c>arrakis-admin</c>, claim <c>role</c> = <c>operator</c>, signed by freeside's keyring.</summary>
    public const string OperatorPolicy = "operator";

    public const string AdminAudience = "arrakis-admin";

    public const string OperatorRole = "operator";

    /// <summary>The longest operator token freeside accepts (<c>exp</c> − <c>iat</c>).</summary>
    public static readonly TimeSpan MaxOperatorTokenLifetime = TimeSpan.FromHours(1);

    public static WebApplicationBuilder AddCommunities(this WebApplicationBuilder builder)
    {
        builder.Services.AddTokenPolicy(OperatorPolicy, sp => new TokenPolicy(
            OperatorPolicy,
            new Dictionary<string, IKeySource> { [FreesideService.Issuer] = sp.GetRequiredService<LocalKeySource>() },
            [AdminAudience],
            MaxOperatorTokenLifetime));
        builder.Services.AddSingleton<CommunityStore>();
        return builder;
    }

    /// <summary>Requires an operator token: a verified admin-audience token whose <c>role</c> claim is <c>operator</c> (else 403).</summary>
    public static TBuilder RequireOperator<TBuilder>(this TBuilder builder)
        where TBuilder : IEndpointConventionBuilder
    {
        return builder.RequireToken(OperatorPolicy, token =>
            token.TryGetPayloadValue<string>("role", out var role) && role == OperatorRole
                ? null
                : Problems.Forbidden("This route needs an operator token (claim role=operator)."));
    }
}
