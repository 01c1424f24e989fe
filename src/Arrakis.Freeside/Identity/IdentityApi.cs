using System.Net.Http.Headers;
using System.Text.Json;
using Arrakis.Shared.Http;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Arrakis.Freeside.Identity;

/// <summary>Diagnostic routes that show the trust chain: echo a user token, and relay it freeside → finn → dixie.</summary>
public static class IdentityApi
{
    public static IEndpointRouteBuilder MapIdentityApi(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/api/v1/auth").WithTags("Identity");
        group.MapGet("/whoami", (HttpContext http) => TypedResults.Ok(new { service = FreesideService.Name, claims = TokenEndpoints.ClaimsOf(http.VerifiedToken()) }))
            .RequireToken(IdentitySetup.UserPolicy);
        group.MapPost("/chain", RelayChainAsync).RequireToken(IdentitySetup.UserPolicy);
        return app;
    }

    /// <summary>Mints a finn token and a dixie token from the verified user token and reports what each hop verified.</summary>
    static async Task<IResult> RelayChainAsync(HttpContext http, TokenIssuer issuer, IHttpClientFactory clients, CancellationToken ct)
    {
        var user = http.VerifiedToken();
        var claims = new Dictionary<string, object>
        {
            ["tenant_id"] = user.TryGetPayloadValue<string>("tenant_id", out var tenant) ? tenant : "unknown",
            ["sub"] = user.Subject ?? "",
        };
        var finn = await CallAsync(clients.CreateClient(IdentitySetup.FinnClient), HttpMethod.Post, "api/v1/chain/relay",
            issuer.Mint(FreesideService.Issuer, IdentitySetup.FinnAudience, claims), ct);
        var dixie = await CallAsync(clients.CreateClient(IdentitySetup.DixieClient), HttpMethod.Get, "api/v1/auth/whoami",
            issuer.Mint(FreesideService.Issuer, IdentitySetup.DixieAudience, claims), ct);
        if (finn.Status != 200 || dixie.Status != 200)
        {
            return Problems.Create(502, "CHAIN_BROKEN", $"finn answered {finn.Status}, dixie answered {dixie.Status}.",
                new Dictionary<string, object?> { ["finn"] = finn.Body, ["dixie"] = dixie.Body });
        }

        return TypedResults.Ok(new { service = FreesideService.Name, claims = TokenEndpoints.ClaimsOf(user), finn = finn.Body, dixie = dixie.Body });
    }

    internal static async Task<(int Status, JsonElement? Body)> CallAsync(HttpClient client, HttpMethod method, string path, string token, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(method, path);
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        if (method == HttpMethod.Post)
        {
            request.Content = new StringContent("{}", System.Text.Encoding.UTF8, "application/json");
        }

        try
        {
            using var response = await client.SendAsync(request, ct);
            var text = await response.Content.ReadAsStringAsync(ct);
            JsonElement? body = null;
            try
            {
                body = JsonDocument.Parse(text).RootElement.Clone();
            }
            catch (JsonException)
            {
            }

            return ((int)response.StatusCode, body);
        }
        catch (Exception ex) when (ex is HttpRequestException || (ex is TaskCanceledException && !ct.IsCancellationRequested))
        {
            // Unreachable, or no answer within the client's timeout (which escaped as a 500): the hop answered nothing.
            return (0, null);
        }
    }
}
