using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Arrakis.Shared.Tokens;
using Microsoft.IdentityModel.Tokens;

namespace Arrakis.Cli.Gate;

/// <summary>
/// Mints the checklist's user test token (freeside-launch-gate.md §3) from a P-256 PEM, in-process: header
/// <c>{"alg":"ES256","typ":"JWT"}</c> with no kid, <c>iss</c>/<c>aud</c> arrakis, 5 minutes, a fresh <c>jti</c>,
/// no <c>sub</c> or <c>nbf</c>. A new token for every request keeps jti replay protection happy.
/// </summary>
internal sealed class GateTokens : IDisposable
{
    public static readonly TimeSpan Lifetime = TimeSpan.FromMinutes(5);
    static readonly string Header = Base64UrlEncoder.Encode("""{"alg":"ES256","typ":"JWT"}""");

    readonly ECDsa _key;
    readonly TimeProvider _time;

    GateTokens(ECDsa key, TimeProvider time)
    {
        _key = key;
        _time = time;
    }

    /// <exception cref="FormatException">The file is not a usable P-256 PEM.</exception>
    public static GateTokens Load(string path, TimeProvider? time = null)
    {
        var pem = File.ReadAllText(path);
        var key = Keyring.ParsePem(pem);
        if (key.KeySize != 256)
        {
            key.Dispose();
            throw new FormatException($"{path} holds a {key.KeySize}-bit key; ES256 needs P-256.");
        }

        return new GateTokens(key, time ?? TimeProvider.System);
    }

    public string Mint()
    {
        var iat = _time.GetUtcNow().ToUnixTimeSeconds();
        var payload = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["v"] = 1,
            ["tenant_id"] = "test-tenant",
            ["access_level"] = "free",
            ["pool_id"] = "cheap",
            ["allowed_pools"] = new[] { "cheap" },
            ["platform"] = "test",
            ["channel_id"] = "test-channel",
            ["pool_mapping_version"] = "1.0.0",
            ["iss"] = "arrakis",
            ["aud"] = "arrakis",
            ["iat"] = iat,
            ["exp"] = iat + (long)Lifetime.TotalSeconds,
            ["jti"] = Guid.NewGuid().ToString(),
        });
        var signingInput = Header + "." + Base64UrlEncoder.Encode(payload);
        var signature = _key.SignData(Encoding.ASCII.GetBytes(signingInput), HashAlgorithmName.SHA256, DSASignatureFormat.IeeeP1363FixedFieldConcatenation);
        return signingInput + "." + Base64UrlEncoder.Encode(signature);
    }

    public void Dispose() => _key.Dispose();
}
