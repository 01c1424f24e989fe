using System.Diagnostics.Metrics;
using System.Text;
using System.Text.Json;
using Arrakis.Shared.Caching;
using Arrakis.Shared.Hosting;
using Arrakis.Shared.Http;
using Microsoft.Extensions.Logging;
using Microsoft.IdentityModel.JsonWebTokens;
using Microsoft.IdentityModel.Tokens;

namespace Arrakis.Shared.Tokens;

/// <summary>What a route accepts: which issuers (each with its key source), which audiences, and the longest lifetime.</summary>
public sealed record TokenPolicy(string Name, IReadOnlyDictionary<string, IKeySource> Issuers, IReadOnlyList<string> Audiences, TimeSpan MaxLifetime);

public sealed record TokenVerification(JsonWebToken? Token, string? Failure)
{
    public bool Succeeded => Token is not null;

    public static TokenVerification Fail(string reason) => new(null, reason);

    /// <summary>
    /// A value taken from the token, as a refusal repeats it (in the 401's detail and the log): at most 64 characters,
    /// control characters replaced. A caller chooses these values, so they must not fill logs or answers.
    /// </summary>
    public static string Echo(string value)
    {
        var shown = value.Length > 64 ? value[..64] + "…" : value;
        return new string(shown.Select(ch => char.IsControl(ch) ? '?' : ch).ToArray());
    }
}

/// <summary>
/// Verifies bearer tokens: ES256 only, issuer and audience from the route's allow-list, 30 s of clock skew, and
/// one use per <c>jti</c>. Every rejection is logged as <c>JWT_VALIDATION_FAILED</c> with its reason.
/// </summary>
public sealed partial class TokenVerifier(IReplayCache replay, TimeProvider time, ILogger<TokenVerifier> logger, IMeterFactory meters)
{
    public static readonly TimeSpan ClockSkew = TimeSpan.FromSeconds(30);
    static readonly JsonWebTokenHandler Handler = new();

    readonly Counter<long> _failures = CreateFailureCounter(meters);

    static Counter<long> CreateFailureCounter(IMeterFactory meters)
    {
        var counter = meters.Create(MetricNames.AuthMeter).CreateCounter<long>(MetricNames.JwtValidationFailure, "{token}", "Tokens rejected");
        counter.Add(0); // the JWT failure alarm needs the series before the first rejection
        return counter;
    }

    public async Task<TokenVerification> VerifyAsync(string? token, TokenPolicy policy, CancellationToken ct)
    {
        var result = await VerifyCoreAsync(token, policy, ct);
        if (!result.Succeeded)
        {
            _failures.Add(1, new KeyValuePair<string, object?>("policy", policy.Name));
            LogFailure(logger, policy.Name, result.Failure!);
        }

        return result;
    }

    [LoggerMessage(EventId = 2001, EventName = "JWT_VALIDATION_FAILED", Level = LogLevel.Warning, Message = "JWT_VALIDATION_FAILED policy={Policy} reason={Reason}")]
    static partial void LogFailure(ILogger logger, string policy, string reason);

    async Task<TokenVerification> VerifyCoreAsync(string? token, TokenPolicy policy, CancellationToken ct)
    {
        if (string.IsNullOrWhiteSpace(token))
        {
            return TokenVerification.Fail("missing bearer token");
        }

        var parts = token.Split('.');
        if (parts.Length != 3)
        {
            return TokenVerification.Fail("malformed token: expected three segments");
        }

        JsonElement header;
        JsonElement payload;
        try
        {
            header = JsonDocument.Parse(Base64UrlEncoder.DecodeBytes(parts[0])).RootElement;
            payload = JsonDocument.Parse(Base64UrlEncoder.DecodeBytes(parts[1])).RootElement;
        }
        catch (Exception ex) when (ex is FormatException or JsonException or ArgumentException)
        {
            return TokenVerification.Fail("malformed token: bad base64url or JSON");
        }

        if (header.ValueKind != JsonValueKind.Object || payload.ValueKind != JsonValueKind.Object)
        {
            return TokenVerification.Fail("malformed token: header and payload must be JSON objects");
        }

        // Reading a string that holds invalid UTF-8 or a lone surrogate throws: refuse such a token before any claim is read.
        if (JsonText.FindInvalid(header) is not null || JsonText.FindInvalid(payload) is not null)
        {
            return TokenVerification.Fail("malformed token: header or payload is not valid UTF-8 text");
        }

        var alg = header.TryGetProperty("alg", out var a) && a.ValueKind == JsonValueKind.String ? a.GetString() : null;
        if (alg != SecurityAlgorithms.EcdsaSha256)
        {
            return TokenVerification.Fail($"algorithm not allowed: {(alg is null ? "missing" : TokenVerification.Echo(alg))} (only ES256)");
        }

        // RFC 7515 §4.1.11: a recipient must refuse a token whose "crit" names an extension it does not process, and
        // this verifier processes none (no token we issue carries one).
        if (header.TryGetProperty("crit", out _))
        {
            return TokenVerification.Fail("critical header extensions are not supported (\"crit\")");
        }

        byte[] signature;
        try
        {
            signature = Base64UrlEncoder.DecodeBytes(parts[2]);
        }
        catch (FormatException)
        {
            return TokenVerification.Fail("malformed token: bad signature encoding");
        }

        if (signature.Length != 64)
        {
            return TokenVerification.Fail("bad signature: ES256 needs a 64-byte R||S signature");
        }

        var issuer = payload.TryGetProperty("iss", out var i) && i.ValueKind == JsonValueKind.String ? i.GetString() : null;
        if (issuer is null || !policy.Issuers.TryGetValue(issuer, out var source))
        {
            return TokenVerification.Fail($"issuer not allowed: {(issuer is null ? "missing" : TokenVerification.Echo(issuer))}");
        }

        var kid = header.TryGetProperty("kid", out var k) && k.ValueKind == JsonValueKind.String ? k.GetString() : null;
        var keys = await source.GetKeysAsync(kid, ct);
        if (keys.Count == 0)
        {
            return TokenVerification.Fail(kid is null ? "no published keys for issuer" : $"unknown kid: {TokenVerification.Echo(kid)}");
        }

        var now = time.GetUtcNow();
        var parameters = new TokenValidationParameters
        {
            ValidIssuer = issuer,
            ValidAudiences = policy.Audiences,
            ValidAlgorithms = [SecurityAlgorithms.EcdsaSha256],
            IssuerSigningKeys = keys.Select(key => (SecurityKey)key.PublicSecurityKey()).ToList(),
            TryAllIssuerSigningKeys = true,
            ClockSkew = ClockSkew,
            RequireExpirationTime = true,
            RequireSignedTokens = true,
            ValidateLifetime = true,
            LifetimeValidator = (nbf, exp, _, _) => ValidateLifetime(nbf, exp, now),
        };

        var validation = await Handler.ValidateTokenAsync(token, parameters);
        if (!validation.IsValid)
        {
            return TokenVerification.Fail(Describe(validation.Exception));
        }

        var jwt = (JsonWebToken)validation.SecurityToken;
        // Compared as seconds: DateTimeOffset.FromUnixTimeSeconds throws past year 9999, and a signed token could say so.
        if (jwt.TryGetPayloadValue<long>("iat", out var iat) && (iat < 0 || iat > (now + ClockSkew).ToUnixTimeSeconds()))
        {
            return TokenVerification.Fail(iat < 0 ? "token iat is before 1970" : "token issued in the future");
        }

        if (jwt.ValidTo - (jwt.IssuedAt == DateTime.MinValue ? now.UtcDateTime : jwt.IssuedAt) > policy.MaxLifetime + ClockSkew)
        {
            return TokenVerification.Fail($"token lifetime exceeds {policy.MaxLifetime.TotalSeconds:0} s");
        }

        var jti = jwt.Id;
        if (string.IsNullOrEmpty(jti))
        {
            return TokenVerification.Fail("missing jti");
        }

        if (!await replay.TryRegisterAsync(issuer + ":" + jti, new DateTimeOffset(jwt.ValidTo, TimeSpan.Zero) + ClockSkew, ct))
        {
            return TokenVerification.Fail("replayed jti");
        }

        return new TokenVerification(jwt, null);
    }

    static bool ValidateLifetime(DateTime? nbf, DateTime? exp, DateTimeOffset now)
    {
        if (exp is null || exp.Value.ToUniversalTime() + ClockSkew < now.UtcDateTime)
        {
            throw new SecurityTokenExpiredException("token expired");
        }

        if (nbf is { } n && n.ToUniversalTime() - ClockSkew > now.UtcDateTime)
        {
            throw new SecurityTokenNotYetValidException("token not yet valid");
        }

        return true;
    }

    static string Describe(Exception? ex) => ex switch
    {
        SecurityTokenExpiredException => "token expired",
        SecurityTokenNotYetValidException => "token not yet valid",
        SecurityTokenInvalidAudienceException => "audience not allowed",
        SecurityTokenInvalidIssuerException => "issuer not allowed",
        SecurityTokenInvalidSignatureException or SecurityTokenSignatureKeyNotFoundException => "bad signature",
        SecurityTokenInvalidAlgorithmException => "algorithm not allowed",
        SecurityTokenNoExpirationException => "missing exp",
        SecurityTokenMalformedException => "malformed token",
        // The handler reads registered claims by type: a string aud, numeric exp/iat/nbf. Anything else throws this.
        ArgumentException => "malformed token: a registered claim (aud, exp, iat, nbf, sub, jti) has the wrong JSON type",
        null => "invalid token",
        _ => "invalid token: " + ex.GetType().Name.Replace("SecurityToken", "", StringComparison.Ordinal).Replace("Exception", "", StringComparison.Ordinal),
    };
}
