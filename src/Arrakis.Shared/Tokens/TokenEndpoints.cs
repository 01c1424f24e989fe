using Arrakis.Shared.Http;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.IdentityModel.JsonWebTokens;

namespace Arrakis.Shared.Tokens;

/// <summary>Builds one named token policy from the service provider (so it can reach keyrings and HTTP clients).</summary>
public sealed record TokenPolicyRegistration(string Name, Func<IServiceProvider, TokenPolicy> Build);

/// <summary>
/// Endpoint metadata: the route requires a bearer token satisfying the named policy and, when given, <paramref name="Check"/>
/// on the verified token (which answers the refusal, such as a 403, or null to let the request through).
/// </summary>
public sealed record TokenRequirement(string Policy, Func<JsonWebToken, IResult?>? Check = null);

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
    const string VerifiedKey = "arrakis.token.verified";

    /// <summary>
    /// Requires a bearer token that satisfies <paramref name="policy"/>; otherwise answers 401 UNAUTHORIZED. The check
    /// runs in <see cref="VerifyTokensAsync"/> (added by <c>UseServiceDefaults</c>) after routing and before the route's
    /// parameters bind, so a caller without a valid token learns nothing about the body the route expects (a bad body
    /// answered 400 naming its field before the 401). The endpoint filter is the fallback for a pipeline without it.
    /// </summary>
    public static TBuilder RequireToken<TBuilder>(this TBuilder builder, string policy, Func<JsonWebToken, IResult?>? check = null)
        where TBuilder : IEndpointConventionBuilder
    {
        var requirement = new TokenRequirement(policy, check);
        builder.WithMetadata(requirement);
        return builder.AddEndpointFilter(async (context, next) =>
        {
            var http = context.HttpContext;
            if (!http.Items.ContainsKey(VerifiedKey))
            {
                var rejected = await VerifyAsync(http, [requirement]);
                if (rejected is not null)
                {
                    return rejected;
                }
            }

            return await next(context);
        });
    }

    /// <summary>Middleware: verifies the bearer token of a route that requires one before the route runs.</summary>
    public static async Task VerifyTokensAsync(HttpContext http, RequestDelegate next)
    {
        var requirements = http.GetEndpoint()?.Metadata.GetOrderedMetadata<TokenRequirement>();
        if (requirements is { Count: > 0 })
        {
            var rejected = await VerifyAsync(http, requirements);
            if (rejected is not null)
            {
                await rejected.ExecuteAsync(http);
                return;
            }
        }

        await next(http);
    }

    static async Task<IResult?> VerifyAsync(HttpContext http, IReadOnlyList<TokenRequirement> requirements)
    {
        var verifier = http.RequestServices.GetRequiredService<TokenVerifier>();
        var policies = http.RequestServices.GetRequiredService<TokenPolicies>();
        var header = http.Request.Headers.Authorization.ToString();
        var token = header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) ? header[7..].Trim() : null;
        foreach (var requirement in requirements)
        {
            var result = await verifier.VerifyAsync(token, policies[requirement.Policy], http.RequestAborted);
            if (!result.Succeeded)
            {
                http.Response.Headers.WWWAuthenticate = "Bearer error=\"invalid_token\"";
                return Problems.Unauthorized("The bearer token was rejected: " + result.Failure + ".");
            }

            http.Items[ItemKey] = result.Token;
            if (requirement.Check?.Invoke(result.Token!) is { } refused)
            {
                return refused;
            }
        }

        http.Items[VerifiedKey] = true;
        return null;
    }

    public static JsonWebToken VerifiedToken(this HttpContext http) =>
        http.Items[ItemKey] as JsonWebToken ?? throw new InvalidOperationException("No verified token on this request; add RequireToken to the route.");

    /// <summary>The verified claims as a JSON-friendly dictionary (for echo routes and diagnostics).</summary>
    public static Dictionary<string, object?> ClaimsOf(JsonWebToken token)
    {
        var doc = System.Text.Json.JsonDocument.Parse(Microsoft.IdentityModel.Tokens.Base64UrlEncoder.Decode(token.EncodedPayload));
        return doc.RootElement.EnumerateObject().ToDictionary(p => p.Name, p => (object?)p.Value.Clone());
    }
}
