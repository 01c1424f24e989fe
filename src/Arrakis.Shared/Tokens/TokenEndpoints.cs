using Arrakis.Shared.Http;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.IdentityModel.JsonWebTokens;

namespace Arrakis.Shared.Tokens;

/// <summary>Builds one named token policy from the service provider (so it can reach keyrings and HTTP clients).</summary>
public sealed record TokenPolicyRegistration(string Name, Func<IServiceProvider, TokenPolicy> Build);

/// <summary>The token policies a service's routes refer to by name.</summary>
public sealed class TokenPolicies(IServiceProvider services, IEnumerable<TokenPolicyRegistration> registrations)
{
    readonly Dictionary<string, Lazy<TokenPolicy>> _policies = registrations.ToDictionary(
        r => r.Name, r => new Lazy<TokenPolicy>(() => r.Build(services)), StringComparer.Ordinal);

    public TokenPolicy this[string name] => _policies.TryGetValue(name, out var p)
        ? p.Value
        : throw new InvalidOperationException($"Token policy '{name}' is not registered.");
}

public static class TokenEndpoints
{
    public static IServiceCollection AddTokenPolicy(this IServiceCollection services, string name, Func<IServiceProvider, TokenPolicy> build) =>
        services.AddSingleton(new TokenPolicyRegistration(name, build));

    const string ItemKey = "arrakis.token";

    /// <summary>Requires a bearer token that satisfies <paramref name="policy"/>; otherwise answers 401 UNAUTHORIZED.</summary>
    public static TBuilder RequireToken<TBuilder>(this TBuilder builder, string policy)
        where TBuilder : IEndpointConventionBuilder =>
        builder.AddEndpointFilter(async (context, next) =>
        {
            var http = context.HttpContext;
            var verifier = http.RequestServices.GetRequiredService<TokenVerifier>();
            var policies = http.RequestServices.GetRequiredService<TokenPolicies>();
            var header = http.Request.Headers.Authorization.ToString();
            var token = header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) ? header[7..].Trim() : null;
            var result = await verifier.VerifyAsync(token, policies[policy], http.RequestAborted);
            if (!result.Succeeded)
            {
                http.Response.Headers.WWWAuthenticate = "Bearer error=\"invalid_token\"";
                return Problems.Unauthorized("The bearer token was rejected: " + result.Failure + ".");
            }

            http.Items[ItemKey] = result.Token;
            return await next(context);
        });

    public static JsonWebToken VerifiedToken(this HttpContext http) =>
        http.Items[ItemKey] as JsonWebToken ?? throw new InvalidOperationException("No verified token on this request; add RequireToken to the route.");

    /// <summary>The verified claims as a JSON-friendly dictionary (for echo routes and diagnostics).</summary>
    public static Dictionary<string, object?> ClaimsOf(JsonWebToken token)
    {
        var doc = System.Text.Json.JsonDocument.Parse(Microsoft.IdentityModel.Tokens.Base64UrlEncoder.Decode(token.EncodedPayload));
        return doc.RootElement.EnumerateObject().ToDictionary(p => p.Name, p => (object?)p.Value.Clone());
    }
}
