using System.Net.Http.Headers;
using System.Text.Json;
using Arrakis.Shared.Http;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Arrakis.Finn.Identity;

/// <summary>Shows the trust chain: finn echoes freeside's token, and relays to dixie with a token of its own.</summary>
public static class IdentityApi
{
    public static IEndpointRouteBuilder MapIdentityApi(this IEndpointRouteBuilder app)
    {
        app.MapGet("/api/v1/auth/whoami", (HttpContext http) => TypedResults.Ok(new { service = FinnService.Name, claims = TokenEndpoints.ClaimsOf(http.VerifiedToken()) }))
            .RequireToken(IdentitySetup.FreesidePolicy);
        app.MapPost("/api/v1/chain/relay", RelayAsync).RequireToken(IdentitySetup.FreesidePolicy);
        return app;
    }

    static async Task<IResult> RelayAsync(HttpContext http, TokenIssuer issuer, IHttpClientFactory clients, CancellationToken ct)
    {
        var incoming = http.VerifiedToken();
        var token = issuer.Mint(FinnService.Issuer, IdentitySetup.DixieAudience, new Dictionary<string, object>
        {
            ["tenant_id"] = incoming.TryGetPayloadValue<string>("tenant_id", out var tenant) ? tenant : "unknown",
        });
        using var request = new HttpRequestMessage(HttpMethod.Get, "api/v1/auth/whoami");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        try
        {
            using var response = await clients.CreateClient(IdentitySetup.DixieClient).SendAsync(request, ct);
            var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync(ct)).RootElement.Clone();
            if (!response.IsSuccessStatusCode)
            {
                return Problems.Create(502, "CHAIN_BROKEN", $"dixie answered {(int)response.StatusCode}.", new Dictionary<string, object?> { ["dixie"] = body });
            }

            return TypedResults.Ok(new { service = FinnService.Name, claims = TokenEndpoints.ClaimsOf(incoming), dixie = body });
        }
        catch (Exception ex) when (ex is HttpRequestException or JsonException or TaskCanceledException)
        {
            return Problems.Create(502, "CHAIN_BROKEN", "dixie could not be reached: " + ex.Message);
        }
    }
}
