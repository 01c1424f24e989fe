using System.CommandLine;
using System.Security.Cryptography;
using Arrakis.Shared.Tokens;
using Microsoft.IdentityModel.Tokens;

namespace Arrakis.Cli.Commands;

/// <summary><c>loa jwt sign --key PEM</c>: a user test token shaped like the launch checklist's.</summary>
internal static class JwtCommand
{
    /// <summary>The services' default Keyring:MaxTokenLifetime, in seconds.</summary>
    static readonly int DefaultMaxLifetimeSeconds = (int)new KeyringOptions().MaxTokenLifetime.TotalSeconds;

    public static Command Create()
    {
        var jwt = new Command("jwt", "Test tokens.");
        var key = new Option<FileInfo>("--key") { Description = "PKCS#8 (or SEC1) P-256 PEM, e.g. .loa/staging.pem", Required = true };
        var tenant = new Option<string>("--tenant") { Description = "tenant_id claim", DefaultValueFactory = _ => "test-tenant" };
        var access = new Option<string>("--access-level") { Description = "access_level claim (free|pro|enterprise)", DefaultValueFactory = _ => "free" };
        access.AcceptOnlyFromAmong("free", "pro", "enterprise");
        var pool = new Option<string>("--pool") { Description = "pool_id claim", DefaultValueFactory = _ => "cheap" };
        var pools = new Option<string>("--allowed-pools") { Description = "comma-separated allowed_pools claim", DefaultValueFactory = _ => "cheap" };
        var iss = new Option<string>("--iss") { Description = "issuer", DefaultValueFactory = _ => "arrakis" };
        var aud = new Option<string>("--aud") { Description = "audience", DefaultValueFactory = _ => "arrakis" };
        var ttl = new Option<int>("--ttl") { Description = $"lifetime in seconds, at least 1 (services refuse more than Keyring:MaxTokenLifetime, {DefaultMaxLifetimeSeconds} by default)", DefaultValueFactory = _ => 300 };
        var kid = new Option<string?>("--kid") { Description = "add a kid header (the checklist's token has none)" };
        var claims = new Option<string[]>("--claim") { Description = "extra claim name=value (repeatable)", AllowMultipleArgumentsPerToken = false };
        var sign = new Command("sign", "Print a signed ES256 user test token (no newline).") { key, tenant, access, pool, pools, iss, aud, ttl, kid, claims };
        sign.SetAction(parse =>
        {
            var file = parse.GetValue(key)!;
            var lifetime = parse.GetValue(ttl);
            if (lifetime < 1)
            {
                Console.Error.WriteLine($"JWT signing failed: --ttl must be at least 1 second, got {lifetime} (the token would be expired when printed)");
                return 2;
            }

            // Operator tokens (aud arrakis-admin) have their own limit; user tokens go by Keyring:MaxTokenLifetime.
            var (limit, rule) = parse.GetValue(aud) == Freeside.Communities.CommunitiesSetup.AdminAudience
                ? ((int)Freeside.Communities.CommunitiesSetup.MaxOperatorTokenLifetime.TotalSeconds, "freeside's operator token limit")
                : (DefaultMaxLifetimeSeconds, "services running the default Keyring:MaxTokenLifetime");
            if (lifetime > limit)
            {
                Console.Error.WriteLine($"loa: warning: a {lifetime} s token is refused by {rule} ({limit} s)");
            }

            if (!file.Exists)
            {
                Console.Error.WriteLine($"JWT signing failed: {file.FullName} does not exist");
                return 1;
            }

            try
            {
                using var ecdsa = Keyring.ParsePem(File.ReadAllText(file.FullName));
                var extra = new Dictionary<string, object>();
                foreach (var pair in parse.GetValue(claims) ?? [])
                {
                    var eq = pair.IndexOf('=', StringComparison.Ordinal);
                    if (eq <= 0)
                    {
                        Console.Error.WriteLine($"JWT signing failed: --claim expects name=value, got '{pair}'");
                        return 2;
                    }

                    extra[pair[..eq]] = pair[(eq + 1)..];
                }

                Console.Write(Sign(ecdsa, parse.GetValue(iss)!, parse.GetValue(aud)!, parse.GetValue(tenant)!, parse.GetValue(access)!,
                    parse.GetValue(pool)!, parse.GetValue(pools)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
                    TimeSpan.FromSeconds(lifetime), parse.GetValue(kid), extra, DateTimeOffset.UtcNow));
                return 0;
            }
            catch (FormatException ex)
            {
                Console.Error.WriteLine("JWT signing failed: " + ex.Message);
                return 1;
            }
        });
        jwt.Subcommands.Add(sign);
        return jwt;
    }

    public static string Sign(ECDsa key, string iss, string aud, string tenant, string accessLevel, string pool, string[] allowedPools,
        TimeSpan ttl, string? kid, IDictionary<string, object>? extra, DateTimeOffset now)
    {
        var claims = new Dictionary<string, object>
        {
            ["v"] = 1,
            ["tenant_id"] = tenant,
            ["access_level"] = accessLevel,
            ["pool_id"] = pool,
            ["allowed_pools"] = allowedPools,
            ["platform"] = "test",
            ["channel_id"] = "test-channel",
            ["pool_mapping_version"] = "1.0.0",
        };
        foreach (var (k, v) in extra ?? new Dictionary<string, object>())
        {
            claims[k] = v;
        }

        var securityKey = new ECDsaSecurityKey(key) { KeyId = kid };
        return TokenIssuer.Mint(securityKey, iss, aud, claims, ttl, now, includeKid: kid is not null);
    }
}
