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
}
