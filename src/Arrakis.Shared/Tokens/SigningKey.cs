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

/// <summary>A keyring entry. <see cref="Private"/> is null for keys known only by their public half (remote JWKS).</summary>
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
    public ECDsaSecurityKey PublicSecurityKey()
    {
        var ecdsa = ECDsa.Create(new ECParameters
        {
            Curve = ECCurve.NamedCurves.nistP256,
            Q = new ECPoint { X = Base64UrlEncoder.DecodeBytes(X), Y = Base64UrlEncoder.DecodeBytes(Y) },
        });
        return new ECDsaSecurityKey(ecdsa) { KeyId = Kid };
    }

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
