using System.Text;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Payments;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;

namespace Arrakis.Freeside.Tests.Payments;

/// <summary>Local verification with real EIP-712 signatures (Nethereum, fixed anvil test keys): each failure its own code.</summary>
public sealed class VerificationTests
{
    static readonly DateTimeOffset Now = DateTimeOffset.FromUnixTimeSeconds(1_900_000_000);
    static readonly X402Options Options = new();
    const long Amount = 10_000;

    static AuthorizationVerifier Verifier() => new(Microsoft.Extensions.Options.Options.Create(Options), new FakeTimeProvider(Now));

    static JsonObject Accepted(string? asset = null, string? payTo = null, string network = "eip155:84532", string scheme = "exact") => new()
    {
        ["scheme"] = scheme, ["network"] = network, ["amount"] = "10000", ["asset"] = asset ?? Options.Asset, ["payTo"] = payTo ?? Options.PayTo,
        ["maxTimeoutSeconds"] = 60, ["extra"] = new JsonObject { ["name"] = "USDC", ["version"] = "2" },
    };

    static Eip3009Authorization Good(long value = Amount, string? to = null, long validAfter = 0, long? validBefore = null) =>
        PaymentSigning.Authorization(PaymentSigning.PayerKey, to ?? Options.PayTo, value, validAfter, validBefore ?? Now.ToUnixTimeSeconds() + 60);

    static DecodedPayment Decode(JsonObject payload, int version = 2)
    {
        var (payment, error) = PaymentDecoder.Decode(PaymentSigning.Header(payload), version);
        Assert.Null(error);
        return payment!;
    }

    static string? Check(JsonObject payload, int version = 2) => Verifier().Verify(Decode(payload, version), Amount)?.Code;

    [Fact]
    public void A_correct_v2_authorization_verifies()
    {
        var a = Good();
        Assert.Null(Check(PaymentSigning.V2Payload(Accepted(), a, PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey))));
    }

    [Fact]
    public void A_correct_v1_authorization_verifies()
    {
        var a = Good();
        Assert.Null(Check(PaymentSigning.V1Payload("base-sepolia", a, PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey)), 1));
    }

    [Fact]
    public void The_signature_recovers_to_the_payer_address()
    {
        var a = Good();
        var recovered = Eip3009TypedData.Recover(Options, a, PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey));
        Assert.Equal(PaymentSigning.AddressOf(PaymentSigning.PayerKey), recovered, ignoreCase: true);
        Assert.Equal("0x70997970C51812dc3A010C7d01b50e0d17dc79C8", recovered, ignoreCase: true);
    }

    [Fact]
    public void A_wrong_signer_is_invalid_signature()
    {
        var a = Good();
        var signedByOther = PaymentSigning.Sign(Options, a, PaymentSigning.RelayerKey);
        Assert.Equal(X402Errors.InvalidSignature, Check(PaymentSigning.V2Payload(Accepted(), a, signedByOther)));
    }

    [Fact]
    public void A_wrong_recipient_is_recipient_mismatch()
    {
        var a = Good(to: PaymentSigning.AddressOf(PaymentSigning.RelayerKey));
        Assert.Equal(X402Errors.RecipientMismatch, Check(PaymentSigning.V2Payload(Accepted(), a, PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey))));
    }

    [Fact]
    public void A_value_below_the_amount_is_value_mismatch()
    {
        var a = Good(value: Amount - 1);
        Assert.Equal(X402Errors.ValueMismatch, Check(PaymentSigning.V2Payload(Accepted(), a, PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey))));
    }

    [Fact]
    public void A_wrong_network_is_invalid_network()
    {
        var a = Good();
        var sig = PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey);
        Assert.Equal(X402Errors.InvalidNetwork, Check(PaymentSigning.V2Payload(Accepted(network: "eip155:8453"), a, sig)));
        Assert.Equal(X402Errors.InvalidNetwork, Check(PaymentSigning.V1Payload("base", a, sig), 1));
    }

    [Fact]
    public void A_wrong_asset_is_asset_mismatch()
    {
        var a = Good();
        Assert.Equal(X402Errors.AssetMismatch, Check(PaymentSigning.V2Payload(Accepted(asset: "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"), a,
            PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey))));
    }

    [Fact]
    public void A_signature_for_another_token_contract_is_invalid()
    {
        var a = Good();
        var other = new X402Options { Asset = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913" };
        Assert.Equal(X402Errors.InvalidSignature, Check(PaymentSigning.V2Payload(Accepted(), a, PaymentSigning.Sign(other, a, PaymentSigning.PayerKey))));
    }

    [Fact]
    public void A_wrong_scheme_is_invalid_scheme()
    {
        var a = Good();
        Assert.Equal(X402Errors.InvalidScheme, Check(PaymentSigning.V2Payload(Accepted(scheme: "upto"), a, PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey))));
    }

    [Fact]
    public void An_expired_authorization_is_valid_before()
    {
        var a = Good(validBefore: Now.ToUnixTimeSeconds() - 1);
        Assert.Equal(X402Errors.ValidBefore, Check(PaymentSigning.V2Payload(Accepted(), a, PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey))));
    }

    [Fact]
    public void An_authorization_inside_the_six_second_buffer_is_valid_before()
    {
        var a = Good(validBefore: Now.ToUnixTimeSeconds() + 6);
        Assert.Equal(X402Errors.ValidBefore, Check(PaymentSigning.V2Payload(Accepted(), a, PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey))));
        var b = Good(validBefore: Now.ToUnixTimeSeconds() + 7);
        Assert.Null(Check(PaymentSigning.V2Payload(Accepted(), b, PaymentSigning.Sign(Options, b, PaymentSigning.PayerKey))));
    }

    [Fact]
    public void A_not_yet_valid_authorization_is_valid_after()
    {
        var a = Good(validAfter: Now.ToUnixTimeSeconds() + 30, validBefore: Now.ToUnixTimeSeconds() + 120);
        Assert.Equal(X402Errors.ValidAfter, Check(PaymentSigning.V2Payload(Accepted(), a, PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey))));
    }

    [Theory]
    [InlineData("value")]
    [InlineData("validBefore")]
    [InlineData("nonce")]
    [InlineData("from")]
    public void A_tampered_field_breaks_the_signature(string field)
    {
        var a = Good();
        var payload = PaymentSigning.V2Payload(Accepted(), a, PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey));
        var auth = payload["payload"]!["authorization"]!.AsObject();
        auth[field] = field switch
        {
            "value" => "20000",
            "validBefore" => (Now.ToUnixTimeSeconds() + 3600).ToString(),
            "nonce" => PaymentSigning.RandomNonce(),
            _ => PaymentSigning.AddressOf(PaymentSigning.RelayerKey),
        };
        Assert.Equal(X402Errors.InvalidSignature, Check(payload));
    }

    [Theory]
    [InlineData("not base64 at all!")]
    [InlineData("eyJ4NDAy")]
    [InlineData("")]
    public void Malformed_base64_is_invalid_payload(string header)
    {
        var (payment, error) = PaymentDecoder.Decode(header, 2);
        Assert.Null(payment);
        Assert.Equal((400, X402Errors.InvalidPayload), (error!.Status, error.Code));
    }

    [Theory]
    [InlineData("{\"x402Version\":2,")]
    [InlineData("[1,2,3]")]
    [InlineData("plain text")]
    public void Malformed_json_is_invalid_payload(string json)
    {
        var (payment, error) = PaymentDecoder.Decode(Convert.ToBase64String(Encoding.UTF8.GetBytes(json)), 2);
        Assert.Null(payment);
        Assert.Equal((400, X402Errors.InvalidPayload), (error!.Status, error.Code));
    }

    [Fact]
    public void A_version_that_does_not_match_the_header_is_invalid_version()
    {
        var a = Good();
        var v1 = PaymentSigning.V1Payload("base-sepolia", a, PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey));
        var (_, error) = PaymentDecoder.Decode(PaymentSigning.Header(v1), 2);
        Assert.Equal(X402Errors.InvalidVersion, error!.Code);
    }

    [Fact]
    public void A_payload_without_signature_or_bad_fields_is_invalid_payload()
    {
        var a = Good();
        var payload = PaymentSigning.V2Payload(Accepted(), a, "0x1234");
        Assert.Equal(X402Errors.InvalidPayload, PaymentDecoder.Decode(PaymentSigning.Header(payload), 2).Error!.Code);
        var badValue = PaymentSigning.V2Payload(Accepted(), a, PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey));
        badValue["payload"]!["authorization"]!["value"] = "-5";
        Assert.Equal(X402Errors.InvalidPayload, PaymentDecoder.Decode(PaymentSigning.Header(badValue), 2).Error!.Code);
    }

    [Theory]
    [InlineData("short-id")]
    [InlineData("")]
    public void A_payment_identifier_outside_16_to_128_chars_is_invalid_payload(string id)
    {
        var a = Good();
        var payload = PaymentSigning.V2Payload(Accepted(), a, PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey), id);
        Assert.Equal(X402Errors.InvalidPayload, PaymentDecoder.Decode(PaymentSigning.Header(payload), 2).Error!.Code);
    }

    static string SignedPayloadJson(Eip3009Authorization? authorization = null)
    {
        var a = authorization ?? Good();
        return PaymentSigning.V2Payload(Accepted(), a, PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey)).ToJsonString();
    }

    static PaymentRejection? DecodeText(string json) => PaymentDecoder.Decode(Convert.ToBase64String(Encoding.UTF8.GetBytes(json)), 2).Error;

    /// <summary>A repeated key makes the signed fields ambiguous (which value did the payer sign?); it used to throw (500).</summary>
    [Theory]
    [InlineData("\"value\":\"10000\"", "\"value\":\"10000\",\"value\":\"1\"", "payload.authorization.value")]
    [InlineData("\"x402Version\":2", "\"x402Version\":2,\"x402Version\":2", "x402Version")]
    [InlineData("\"scheme\":\"exact\"", "\"scheme\":\"exact\",\"scheme\":\"exact\"", "accepted.scheme")]
    public void A_repeated_key_in_the_payload_is_invalid_payload(string find, string replace, string field)
    {
        var json = SignedPayloadJson();
        Assert.Contains(find, json, StringComparison.Ordinal);
        var error = DecodeText(json.Replace(find, replace, StringComparison.Ordinal));
        Assert.Equal((400, X402Errors.InvalidPayload), (error!.Status, error.Code));
        Assert.Contains(field, error.Detail, StringComparison.Ordinal);
    }

    /// <summary>Lone surrogates (escaped) in read and unread fields; reading one used to throw (500).</summary>
    [Theory]
    [InlineData("\"scheme\":\"exact\"", "\"scheme\":\"exact\\ud800\"", "accepted.scheme")]
    [InlineData("\"name\":\"USDC\"", "\"name\":\"USDC\\udc00\"", "accepted.extra.name")]
    [InlineData("\"x402Version\":2", "\"x402Version\":2,\"note\":\"\\ud800\"", "note")]
    public void Text_with_a_lone_surrogate_in_the_payload_is_invalid_payload(string find, string replace, string field)
    {
        var json = SignedPayloadJson();
        Assert.Contains(find, json, StringComparison.Ordinal);
        var error = DecodeText(json.Replace(find, replace, StringComparison.Ordinal));
        Assert.Equal((400, X402Errors.InvalidPayload), (error!.Status, error.Code));
        Assert.Contains(field, error.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public void Invalid_utf8_in_the_payload_is_invalid_payload()
    {
        var bytes = Encoding.UTF8.GetBytes(SignedPayloadJson().Replace("\"USDC\"", "\"USD#\"", StringComparison.Ordinal));
        bytes[Array.IndexOf(bytes, (byte)'#')] = 0xff;
        var error = PaymentDecoder.Decode(Convert.ToBase64String(bytes), 2).Error;
        Assert.Equal((400, X402Errors.InvalidPayload), (error!.Status, error.Code));
    }

    const string TwoTo256 = "115792089237316195423570985008687907853269984665640564039457584007913129639936";

    /// <summary>uint256 fields: decimal digits only, below 2^256. "10000\n" passed the old <c>$</c> pattern, and
    /// BigInteger.Parse reads it as 10000.</summary>
    [Theory]
    [InlineData("value", "10000\n")]
    [InlineData("value", TwoTo256)]
    [InlineData("value", "999999999999999999999999999999999999999999999999999999999999999999999999999999")]
    [InlineData("value", "+10000")]
    [InlineData("value", "1e4")]
    [InlineData("value", "")]
    [InlineData("validAfter", "0\n")]
    [InlineData("validAfter", TwoTo256)]
    [InlineData("validBefore", TwoTo256)]
    [InlineData("validBefore", "1900000060\n")]
    public void A_uint256_field_that_is_not_plain_digits_below_2_to_the_256_is_invalid_payload(string field, string value)
    {
        var payload = PaymentSigning.V2Payload(Accepted(), Good(), PaymentSigning.Sign(Options, Good(), PaymentSigning.PayerKey));
        payload["payload"]!["authorization"]![field] = value;
        var error = PaymentDecoder.Decode(PaymentSigning.Header(payload), 2).Error;
        Assert.Equal((400, X402Errors.InvalidPayload), (error!.Status, error.Code));
        Assert.Contains("payload.authorization." + field, error.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public void The_largest_uint256_decodes_and_then_fails_verification_not_decoding()
    {
        var max = (System.Numerics.BigInteger.Pow(2, 256) - 1).ToString(System.Globalization.CultureInfo.InvariantCulture);
        var payload = PaymentSigning.V2Payload(Accepted(), Good(), PaymentSigning.Sign(Options, Good(), PaymentSigning.PayerKey));
        payload["payload"]!["authorization"]!["validBefore"] = max;
        Assert.Equal(X402Errors.InvalidSignature, Check(payload));
    }

    [Theory]
    [InlineData("from", "0x70997970C51812dc3A010C7d01b50e0d17dc79C8\n")]
    [InlineData("to", "0x70997970C51812dc3A010C7d01b50e0d17dc79C8\n")]
    [InlineData("nonce", "0x0000000000000000000000000000000000000000000000000000000000000001\n")]
    public void A_hex_field_with_a_trailing_newline_is_invalid_payload(string field, string value)
    {
        var payload = PaymentSigning.V2Payload(Accepted(), Good(), PaymentSigning.Sign(Options, Good(), PaymentSigning.PayerKey));
        payload["payload"]!["authorization"]![field] = value;
        Assert.Equal(X402Errors.InvalidPayload, PaymentDecoder.Decode(PaymentSigning.Header(payload), 2).Error!.Code);
        payload["payload"]!["signature"] = PaymentSigning.Sign(Options, Good(), PaymentSigning.PayerKey) + "\n";
        payload["payload"]!["authorization"]![field] = value.TrimEnd('\n');
        Assert.Equal(X402Errors.InvalidPayload, PaymentDecoder.Decode(PaymentSigning.Header(payload), 2).Error!.Code);
    }

    /// <summary>
    /// A v byte other than 27/28 (USDC's ecrecover refuses 0/1 too), or r/s that are no curve scalar: a signature refusal,
    /// never an exception.
    /// </summary>
    [Theory]
    [InlineData("v", "00")]
    [InlineData("v", "01")]
    [InlineData("v", "02")]
    [InlineData("v", "1d")]
    [InlineData("v", "25")]
    [InlineData("v", "ff")]
    [InlineData("r", "00")]
    [InlineData("r", "ff")]
    [InlineData("s", "00")]
    [InlineData("s", "ff")]
    public void A_signature_that_cannot_be_recovered_is_invalid_signature(string part, string fill)
    {
        var a = Good();
        var signature = PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey); // 0x + r(64) + s(64) + v(2)
        var bad = part switch
        {
            "v" => signature[..^2] + fill,
            "r" => "0x" + string.Concat(Enumerable.Repeat(fill, 32)) + signature[66..],
            _ => signature[..66] + string.Concat(Enumerable.Repeat(fill, 32)) + signature[^2..],
        };
        Assert.Equal(132, bad.Length);
        var recovered = Eip3009TypedData.Recover(Options, a, bad);
        Assert.False(recovered is not null && AuthorizationVerifier.Same(recovered, a.From));
        Assert.Equal(X402Errors.InvalidSignature, Check(PaymentSigning.V2Payload(Accepted(), a, bad)));
    }

    /// <summary>
    /// The same signature with s replaced by n - s (and v flipped) still recovers to the payer, but USDC's ecrecover refuses
    /// an s in the upper half of the order, so settlement would fail after the call ran: it is refused up front.
    /// </summary>
    [Fact]
    public void A_high_s_twin_of_a_good_signature_is_invalid_signature()
    {
        var a = Good();
        var signature = PaymentSigning.Sign(Options, a, PaymentSigning.PayerKey);
        var n = System.Numerics.BigInteger.Parse("0FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141", System.Globalization.NumberStyles.HexNumber,
            System.Globalization.CultureInfo.InvariantCulture);
        var s = System.Numerics.BigInteger.Parse("0" + signature[66..130], System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture);
        var highS = Convert.ToHexStringLower((n - s).ToByteArray(isUnsigned: true, isBigEndian: true)).PadLeft(64, '0');
        var v = signature[^2..] == "1b" ? "1c" : "1b";
        var twin = signature[..66] + highS + v;
        Assert.Null(Check(PaymentSigning.V2Payload(Accepted(), a, signature)));
        Assert.Equal(X402Errors.InvalidSignature, Check(PaymentSigning.V2Payload(Accepted(), a, twin)));
    }
}
