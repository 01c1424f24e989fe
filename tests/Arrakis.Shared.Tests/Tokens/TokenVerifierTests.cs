using System.Diagnostics.Metrics;
using System.Security.Cryptography;
using System.Text;
using Arrakis.Shared.Caching;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using Microsoft.IdentityModel.JsonWebTokens;
using Microsoft.IdentityModel.Tokens;

namespace Arrakis.Shared.Tests.Tokens;

public sealed class TokenVerifierTests
{
    readonly FakeTimeProvider _time = new(DateTimeOffset.UtcNow);
    readonly RecordingLoggerProvider _logs = new();
    readonly ECDsa _ecdsa = ECDsa.Create(ECCurve.NamedCurves.nistP256);
    readonly SigningKey _key;
    readonly TokenVerifier _verifier;
    readonly TokenPolicy _policy;

    public TokenVerifierTests()
    {
        var (x, y) = SigningKey.PublicPoint(_ecdsa);
        _key = new SigningKey("k1", KeyStatus.Active, x, y, _time.GetUtcNow(), null, null, null, null, _ecdsa);
        var meters = new ServiceCollection().AddMetrics().BuildServiceProvider().GetRequiredService<IMeterFactory>();
        _verifier = new TokenVerifier(new MemoryReplayCache(_time), _time, _logs.CreateLogger<TokenVerifier>(), meters);
        _policy = new TokenPolicy("test", new Dictionary<string, IKeySource> { ["arrakis"] = new ListKeySource([_key]) }, ["loa-finn"], TimeSpan.FromMinutes(15));
    }

    sealed class ListKeySource(IReadOnlyList<SigningKey> keys) : IKeySource
    {
        public ValueTask<IReadOnlyList<SigningKey>> GetKeysAsync(string? kid, CancellationToken ct) =>
            ValueTask.FromResult<IReadOnlyList<SigningKey>>(kid is null ? keys : keys.Where(k => k.Kid == kid).ToList());
    }

    string Mint(string iss = "arrakis", string aud = "loa-finn", TimeSpan? lifetime = null, DateTimeOffset? at = null, bool kid = true) =>
        TokenIssuer.Mint(new ECDsaSecurityKey(_ecdsa) { KeyId = "k1" }, iss, aud, new Dictionary<string, object> { ["tenant_id"] = "t" },
            lifetime ?? TimeSpan.FromSeconds(120), at ?? _time.GetUtcNow(), includeKid: kid);

    async Task AssertRejectedAsync(string token, string reasonFragment)
    {
        var result = await _verifier.VerifyAsync(token, _policy, TestContext.Current.CancellationToken);
        Assert.False(result.Succeeded);
        Assert.Contains(reasonFragment, result.Failure, StringComparison.Ordinal);
        var logged = Assert.Single(_logs.WithEvent("JWT_VALIDATION_FAILED"));
        Assert.Equal(result.Failure, logged.Properties["Reason"]);
        if (token.Length > 0)
        {
            Assert.DoesNotContain(token, logged.Message, StringComparison.Ordinal);
        }
    }

    static string B64(string s) => Base64UrlEncoder.Encode(Encoding.UTF8.GetBytes(s));

    /// <summary>A correctly signed ES256 token with exactly these claims (no defaults added).</summary>
    string SignRaw(string payloadJson)
    {
        var signingInput = B64("""{"alg":"ES256","typ":"JWT","kid":"k1"}""") + "." + B64(payloadJson);
        return signingInput + "." + Base64UrlEncoder.Encode(_ecdsa.SignData(Encoding.ASCII.GetBytes(signingInput), HashAlgorithmName.SHA256));
    }

    /// <summary>A correctly signed ES256 token with this header and a valid payload.</summary>
    string SignWithHeader(string headerJson)
    {
        var now = _time.GetUtcNow().ToUnixTimeSeconds();
        var payload = $$"""{"iss":"arrakis","aud":"loa-finn","tenant_id":"t","jti":"{{Guid.NewGuid():N}}","iat":{{now}},"exp":{{now + 60}}}""";
        var signingInput = B64(headerJson) + "." + B64(payload);
        return signingInput + "." + Base64UrlEncoder.Encode(_ecdsa.SignData(Encoding.ASCII.GetBytes(signingInput), HashAlgorithmName.SHA256));
    }

    /// <summary>A registered claim of the wrong JSON type is refused with a reason that says so (it said "invalid token: Argument").</summary>
    [Theory]
    [InlineData("\"aud\":5")]
    [InlineData("\"aud\":\"loa-finn\",\"iat\":\"yesterday\"")]
    [InlineData("\"aud\":\"loa-finn\",\"nbf\":{\"at\":1}")]
    public Task A_registered_claim_of_the_wrong_type_is_refused_saying_so(string claims)
    {
        var now = _time.GetUtcNow().ToUnixTimeSeconds();
        return AssertRejectedAsync(SignRaw($$"""{"iss":"arrakis",{{claims}},"jti":"{{Guid.NewGuid():N}}","exp":{{now + 60}}}"""), "wrong JSON type");
    }

    [Fact]
    public async Task A_token_is_accepted_with_a_plain_header_and_refused_when_it_names_critical_extensions()
    {
        var plain = await _verifier.VerifyAsync(SignWithHeader("""{"alg":"ES256","typ":"JWT","kid":"k1"}"""), _policy, TestContext.Current.CancellationToken);
        Assert.True(plain.Succeeded, plain.Failure);

        // RFC 7797 unencoded payload: a recipient that ignored "crit" would verify a different signing input than the sender meant.
        await AssertRejectedAsync(SignWithHeader("""{"alg":"ES256","typ":"JWT","kid":"k1","b64":false,"crit":["b64"]}"""), "critical header extensions are not supported");
    }

    [Theory]
    [InlineData(99_999_999_999_999L, "token issued in the future")] // past year 9999: DateTimeOffset cannot hold it
    [InlineData(-99_999_999_999_999L, "token iat is before 1970")]
    [InlineData(-1L, "token iat is before 1970")]
    public async Task A_signed_token_with_an_iat_out_of_range_is_rejected_not_thrown(long iat, string reason)
    {
        var now = _time.GetUtcNow().ToUnixTimeSeconds();
        var token = SignRaw($$"""{"iss":"arrakis","aud":"loa-finn","tenant_id":"t","jti":"{{Guid.NewGuid():N}}","iat":{{iat}},"exp":{{now + 60}}}""");
        await AssertRejectedAsync(token, reason);
    }

    static string Segment(string token, int i) => token.Split('.')[i];

    static string Payload(string token) => Base64UrlEncoder.Decode(Segment(token, 1));

    [Fact]
    public async Task A_valid_token_with_kid_is_accepted_and_nothing_is_logged()
    {
        var result = await _verifier.VerifyAsync(Mint(), _policy, TestContext.Current.CancellationToken);
        Assert.True(result.Succeeded, result.Failure);
        Assert.Empty(_logs.WithEvent("JWT_VALIDATION_FAILED"));
    }

    [Fact]
    public async Task A_token_without_kid_is_tried_against_every_published_key()
    {
        var result = await _verifier.VerifyAsync(Mint(kid: false), _policy, TestContext.Current.CancellationToken);
        Assert.True(result.Succeeded, result.Failure);
    }

    [Fact]
    public Task Alg_none_is_rejected()
    {
        var token = Mint();
        return AssertRejectedAsync($"{B64("{\"alg\":\"none\",\"typ\":\"JWT\"}")}.{Segment(token, 1)}.", "algorithm not allowed: none");
    }

    [Fact]
    public Task HS256_signed_with_the_public_key_as_secret_is_rejected()
    {
        var publicDer = _ecdsa.ExportSubjectPublicKeyInfo();
        var header = B64("{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"k1\"}");
        var payload = Segment(Mint(), 1);
        var mac = HMACSHA256.HashData(publicDer, Encoding.ASCII.GetBytes(header + "." + payload));
        return AssertRejectedAsync($"{header}.{payload}.{Base64UrlEncoder.Encode(mac)}", "algorithm not allowed: HS256");
    }

    [Fact]
    public Task RS256_is_rejected()
    {
        using var rsa = RSA.Create(2048);
        var token = new JsonWebTokenHandler().CreateToken(new SecurityTokenDescriptor
        {
            Issuer = "arrakis",
            Audience = "loa-finn",
            Expires = DateTime.UtcNow.AddMinutes(1),
            SigningCredentials = new SigningCredentials(new RsaSecurityKey(rsa) { KeyId = "k1" }, SecurityAlgorithms.RsaSha256),
        });
        return AssertRejectedAsync(token, "algorithm not allowed: RS256");
    }

    [Fact]
    public Task Wrong_issuer_is_rejected() => AssertRejectedAsync(Mint(iss: "evil"), "issuer not allowed: evil");

    [Fact]
    public Task Wrong_audience_is_rejected() => AssertRejectedAsync(Mint(aud: "loa-dixie"), "audience not allowed");

    [Fact]
    public Task Expired_token_is_rejected_after_the_skew() =>
        AssertRejectedAsync(Mint(at: _time.GetUtcNow() - TimeSpan.FromSeconds(120 + 31)), "token expired");

    [Fact]
    public async Task Expired_token_within_the_skew_is_accepted()
    {
        var result = await _verifier.VerifyAsync(Mint(at: _time.GetUtcNow() - TimeSpan.FromSeconds(120 + 20)), _policy, TestContext.Current.CancellationToken);
        Assert.True(result.Succeeded, result.Failure);
    }

    [Fact]
    public Task Not_yet_valid_beyond_the_skew_is_rejected() =>
        AssertRejectedAsync(Mint(at: _time.GetUtcNow() + TimeSpan.FromSeconds(45)), "not yet valid");

    [Fact]
    public Task Tampered_payload_is_rejected()
    {
        var token = Mint();
        var tampered = B64(Payload(token).Replace("\"tenant_id\":\"t\"", "\"tenant_id\":\"admin\"", StringComparison.Ordinal));
        return AssertRejectedAsync($"{Segment(token, 0)}.{tampered}.{Segment(token, 2)}", "bad signature");
    }

    [Fact]
    public Task DER_encoded_signature_is_rejected()
    {
        var token = Mint();
        var raw = Base64UrlEncoder.DecodeBytes(Segment(token, 2));
        var der = DerFromRaw(raw);
        return AssertRejectedAsync($"{Segment(token, 0)}.{Segment(token, 1)}.{Base64UrlEncoder.Encode(der)}", "64-byte R||S");
    }

    [Fact]
    public async Task A_replayed_jti_is_rejected()
    {
        var token = Mint();
        Assert.True((await _verifier.VerifyAsync(token, _policy, TestContext.Current.CancellationToken)).Succeeded);
        await AssertRejectedAsync(token, "replayed jti");
    }

    [Fact]
    public Task Unknown_kid_is_rejected()
    {
        var other = TokenIssuer.Mint(new ECDsaSecurityKey(ECDsa.Create(ECCurve.NamedCurves.nistP256)) { KeyId = "nope" }, "arrakis", "loa-finn",
            new Dictionary<string, object>(), TimeSpan.FromMinutes(1), _time.GetUtcNow(), includeKid: true);
        return AssertRejectedAsync(other, "unknown kid: nope");
    }

    /// <summary>
    /// The refusal repeats the token's kid (and issuer, and alg) in the 401 and the log: at most 64 characters of it,
    /// with control characters replaced, however long or odd the caller made it.
    /// </summary>
    [Fact]
    public async Task A_refusal_repeats_at_most_64_characters_of_a_caller_chosen_value()
    {
        var kid = "k\n" + new string('x', 10_000);
        var other = TokenIssuer.Mint(new ECDsaSecurityKey(ECDsa.Create(ECCurve.NamedCurves.nistP256)) { KeyId = kid }, "arrakis", "loa-finn",
            new Dictionary<string, object>(), TimeSpan.FromMinutes(1), _time.GetUtcNow(), includeKid: true);
        var result = await _verifier.VerifyAsync(other, _policy, TestContext.Current.CancellationToken);
        Assert.Equal("unknown kid: k?" + new string('x', 62) + "…", result.Failure);
    }

    [Fact]
    public Task A_token_signed_by_an_unpublished_key_without_kid_is_rejected()
    {
        var other = TokenIssuer.Mint(new ECDsaSecurityKey(ECDsa.Create(ECCurve.NamedCurves.nistP256)), "arrakis", "loa-finn",
            new Dictionary<string, object>(), TimeSpan.FromMinutes(1), _time.GetUtcNow(), includeKid: false);
        return AssertRejectedAsync(other, "bad signature");
    }

    [Theory]
    [InlineData("abc.def", "three segments")]
    [InlineData("a.b.c.d", "three segments")]
    [InlineData("!!!.@@@.###", "bad base64url or JSON")]
    [InlineData("", "missing bearer token")]
    public Task Malformed_tokens_are_rejected(string token, string reason) => AssertRejectedAsync(token, reason);

    /// <summary>A correctly signed ES256 token over exactly these header and payload bytes, which need not be valid UTF-8.</summary>
    string SignBytes(byte[] header, byte[] payload)
    {
        var signingInput = Base64UrlEncoder.Encode(header) + "." + Base64UrlEncoder.Encode(payload);
        return signingInput + "." + Base64UrlEncoder.Encode(_ecdsa.SignData(Encoding.ASCII.GetBytes(signingInput), HashAlgorithmName.SHA256));
    }

    static byte[] Utf8(string s) => Encoding.UTF8.GetBytes(s);

    static byte[] WithByte(string json, string marker, byte bad)
    {
        var at = json.IndexOf(marker, StringComparison.Ordinal);
        return [.. Utf8(json[..at]), bad, .. Utf8(json[(at + marker.Length)..])];
    }

    /// <summary>Header or payload text that System.Text.Json parses but cannot read: each used to throw (a 500) instead of a 401.</summary>
    [Theory]
    [InlineData("header-bad-utf8")]
    [InlineData("header-lone-surrogate")]
    [InlineData("header-bad-utf8-name")]
    [InlineData("payload-bad-utf8-iss")]
    [InlineData("payload-lone-surrogate-iss")]
    [InlineData("payload-lone-surrogate-claim")]
    [InlineData("payload-bad-utf8-claim")]
    public Task A_token_whose_json_is_not_valid_text_is_rejected_not_thrown(string kind)
    {
        var now = _time.GetUtcNow().ToUnixTimeSeconds();
        const string Header = """{"alg":"ES256","typ":"JWT","kid":"k1"}""";
        var payload = $$"""{"iss":"arrakis","aud":"loa-finn","tenant_id":"t","jti":"{{Guid.NewGuid():N}}","iat":{{now}},"exp":{{now + 60}}}""";
        var token = kind switch
        {
            "header-bad-utf8" => SignBytes(WithByte(Header, "JWT", 0xff), Utf8(payload)),
            "header-lone-surrogate" => SignBytes(Utf8(Header.Replace("ES256", "ES256\\ud800", StringComparison.Ordinal)), Utf8(payload)),
            "header-bad-utf8-name" => SignBytes(WithByte(Header, "typ", 0xc3), Utf8(payload)),
            "payload-bad-utf8-iss" => SignBytes(Utf8(Header), WithByte(payload, "arrakis", 0xfe)),
            "payload-lone-surrogate-iss" => SignBytes(Utf8(Header), Utf8(payload.Replace("\"arrakis\"", "\"\\udc00\"", StringComparison.Ordinal))),
            "payload-lone-surrogate-claim" => SignBytes(Utf8(Header), Utf8(payload.Replace("\"t\"", "\"t\\ud800\"", StringComparison.Ordinal))),
            _ => SignBytes(Utf8(Header), WithByte(payload.Replace("\"t\"", "\"tXX\"", StringComparison.Ordinal), "XX", 0x80)),
        };
        return AssertRejectedAsync(token, "malformed token");
    }

    [Fact]
    public Task A_lifetime_longer_than_the_policy_allows_is_rejected() =>
        AssertRejectedAsync(Mint(lifetime: TimeSpan.FromHours(2)), "lifetime exceeds");

    static byte[] DerFromRaw(byte[] raw)
    {
        static byte[] Int(ReadOnlySpan<byte> v)
        {
            var trimmed = v.TrimStart((byte)0).ToArray();
            return trimmed.Length > 0 && trimmed[0] >= 0x80 ? [0, .. trimmed] : trimmed;
        }

        var r = Int(raw.AsSpan(0, 32));
        var s = Int(raw.AsSpan(32, 32));
        return [0x30, (byte)(r.Length + s.Length + 4), 0x02, (byte)r.Length, .. r, 0x02, (byte)s.Length, .. s];
    }
}
