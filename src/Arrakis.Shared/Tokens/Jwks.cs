using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Arrakis.Shared.Tokens;

public sealed record JsonWebKeyDto(
    [property: JsonPropertyName("kty")] string Kty,
    [property: JsonPropertyName("crv")] string Crv,
    [property: JsonPropertyName("x")] string X,
    [property: JsonPropertyName("y")] string Y,
    [property: JsonPropertyName("kid")] string Kid,
    [property: JsonPropertyName("use")] string Use,
    [property: JsonPropertyName("alg")] string Alg);

public sealed record JwksDocument([property: JsonPropertyName("keys")] IReadOnlyList<JsonWebKeyDto> Keys);

/// <summary>Serves <c>/.well-known/jwks.json</c>: active key first, then pending, then recently retired; public members only.</summary>
public static class JwksApi
{
    public const int MaxAgeSeconds = 30;

    public static JwksDocument Document(KeyringSnapshot snapshot) =>
        new(snapshot.Published.Select(k => new JsonWebKeyDto("EC", "P-256", k.X, k.Y, k.Kid, "sig", "ES256")).ToList());

    public static IEndpointRouteBuilder MapJwksApi(this IEndpointRouteBuilder app)
    {
        app.MapMethods("/.well-known/jwks.json", Hosting.HealthApi.GetOrHead, (HttpContext http, Keyring keyring) =>
        {
            var body = JsonSerializer.SerializeToUtf8Bytes(Document(keyring.Current));
            var etag = Etag(body);
            http.Response.Headers.CacheControl = $"public, max-age={MaxAgeSeconds}";
            http.Response.Headers.ETag = etag;
            var inm = http.Request.Headers.IfNoneMatch.ToString();
            if (inm.Length > 0 && inm.Split(',').Select(s => s.Trim()).Any(t => t == etag || t == "*" || t == etag[2..]))
            {
                return Results.StatusCode(StatusCodes.Status304NotModified);
            }

            return Results.Bytes(body, "application/json");
        }).WithName("Jwks").AllowAnonymous();
        return app;
    }

    public static string Etag(byte[] body) => "W/\"" + Convert.ToHexStringLower(SHA256.HashData(body))[..16] + "\"";
}
