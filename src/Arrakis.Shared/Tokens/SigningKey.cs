using System.Security.Cryptography;
using Microsoft.IdentityModel.Tokens;

namespace Arrakis.Shared.Tokens;

public enum KeyStatus
{
    Pending,
    Active,
    Retired,
    Revoked,
}

/// <summary>
/// A keyring entry. <see cref="Private"/> is set for pending and active keys only: null for retired and revoked keys
/// (they never sign again) and for keys known only by their public half (remote JWKS).
/// </summary>
public sealed record SigningKey(
    string Kid,
    KeyStatus Status,
    string X,
    string Y,
    DateTimeOffset CreatedAt,
    DateTimeOffset? PromoteAt,
    DateTimeOffset? ActivatedAt,
    DateTimeOffset? RetiredAt,
    DateTimeOffset? RevokedAt,
    ECDsa? Private)
{
    /// <summary>
    /// The public key as a security key. One instance per (kid, point), shared: IdentityModel caches its signature
    /// provider per key instance, so verifications stop rebuilding the EC key and its provider every time.
    /// </summary>
    public ECDsaSecurityKey PublicSecurityKey() => PublicKeys.GetOrAdd((Kid, X, Y), static k => new ECDsaSecurityKey(ECDsa.Create(new ECParameters
    {
        Curve = ECCurve.NamedCurves.nistP256,
        Q = new ECPoint { X = Base64UrlEncoder.DecodeBytes(k.X), Y = Base64UrlEncoder.DecodeBytes(k.Y) },
    }))
    { KeyId = k.Kid });

    static readonly System.Collections.Concurrent.ConcurrentDictionary<(string Kid, string X, string Y), ECDsaSecurityKey> PublicKeys = new();

    public static (string X, string Y) PublicPoint(ECDsa key)
    {
        var p = key.ExportParameters(false);
        return (Base64UrlEncoder.Encode(p.Q.X!), Base64UrlEncoder.Encode(p.Q.Y!));
    }

    /// <summary>RFC 7638 thumbprint of the public key, used as the kid of generated keys.</summary>
    public static string Thumbprint(string x, string y)
    {
        var canonical = $"{{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"{x}\",\"y\":\"{y}\"}}";
        return Base64UrlEncoder.Encode(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(canonical)));
    }
}
