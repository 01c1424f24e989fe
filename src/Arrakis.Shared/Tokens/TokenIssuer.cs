using System.Security.Claims;
using Microsoft.IdentityModel.JsonWebTokens;
using Microsoft.IdentityModel.Tokens;

namespace Arrakis.Shared.Tokens;

/// <summary>Mints ES256 tokens with the keyring's active key: <c>kid</c>, <c>typ</c> JWT, <c>jti</c>, short TTL.</summary>
public sealed class TokenIssuer(Keyring keyring, TimeProvider time)
{
    static readonly JsonWebTokenHandler Handler = new() { SetDefaultTimesOnTokenCreation = false };
    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<System.Security.Cryptography.ECDsa, ECDsaSecurityKey> PrivateKeys = new();

    public static readonly TimeSpan ServiceTokenLifetime = TimeSpan.FromSeconds(120);

    public string Mint(string issuer, string audience, IDictionary<string, object> claims, TimeSpan? lifetime = null)
    {
        var active = keyring.Current.Active
            ?? throw new InvalidOperationException("The keyring has no active key; run 'loa keys rotate' or restart the service to create one.");
        return Mint(active, issuer, audience, claims, lifetime ?? ServiceTokenLifetime, time.GetUtcNow());
    }

    public static string Mint(SigningKey key, string issuer, string audience, IDictionary<string, object> claims, TimeSpan lifetime, DateTimeOffset now)
    {
        var ecdsa = key.Private ?? throw new InvalidOperationException("Key has no private half.");
        // One security key per private key instance, so IdentityModel's signature-provider cache is hit on every mint.
        var securityKey = PrivateKeys.GetValue(ecdsa, e => new ECDsaSecurityKey(e) { KeyId = key.Kid });
        return Mint(securityKey, issuer, audience, claims, lifetime, now, includeKid: true);
    }

    public static string Mint(ECDsaSecurityKey key, string issuer, string audience, IDictionary<string, object> claims, TimeSpan lifetime, DateTimeOffset now, bool includeKid)
    {
        var all = new Dictionary<string, object>(claims);
        all.TryAdd(JwtRegisteredClaimNames.Jti, Guid.NewGuid().ToString());
        var descriptor = new SecurityTokenDescriptor
        {
            Issuer = issuer,
            Audience = audience,
            IssuedAt = now.UtcDateTime,
            NotBefore = now.UtcDateTime,
            Expires = (now + lifetime).UtcDateTime,
            Claims = all,
            SigningCredentials = new SigningCredentials(key, SecurityAlgorithms.EcdsaSha256),
            TokenType = "JWT",
        };
        if (!includeKid)
        {
            var bare = new ECDsaSecurityKey(key.ECDsa);
            descriptor.SigningCredentials = new SigningCredentials(bare, SecurityAlgorithms.EcdsaSha256);
        }

        return Handler.CreateToken(descriptor);
    }
}
