using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Payments;
using Nethereum.ABI.EIP712;
using Nethereum.ABI.FunctionEncoding.Attributes;
using Nethereum.Hex.HexConvertors.Extensions;
using Nethereum.Signer;
using Nethereum.Signer.EIP712;

namespace Arrakis.Freeside.Tests.Payments;

/// <summary>Builds real x402 payment headers signed with Nethereum from fixed or fresh keys.</summary>
internal static class PaymentSigning
{
    /// <summary>anvil dev key #0 (public test key, never for a real chain): the direct settler's relayer.</summary>
    public const string RelayerKey = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    /// <summary>anvil dev key #1: a fixed payer for unit tests.</summary>
    public const string PayerKey = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

    /// <summary>anvil dev key #2: the local facilitator's key (separate from the relayer so their nonces never collide).</summary>
    public const string FacilitatorKey = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";

    public static string AddressOf(string key) => new EthECKey(key).GetPublicAddress();

    /// <summary>The legacy proof headers: the transaction hash and <paramref name="key"/>'s EIP-191 signature of it.</summary>
    public static Dictionary<string, string> ProofHeaders(string tx, string key) => new()
    {
        [X402Headers.XPaymentProof] = tx,
        [X402Headers.XPaymentProofSignature] = new EthereumMessageSigner().EncodeUTF8AndSign(LegacyProof.Message(tx), new EthECKey(key)),
    };

    public static string FreshKey() => EthECKey.GenerateKey().GetPrivateKey();

    public static string RandomNonce() => "0x" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));

    public static Eip3009Authorization Authorization(string payerKey, string to, long value, long validAfter, long validBefore, string? nonce = null) =>
        new(AddressOf(payerKey), to, value.ToString(CultureInfo.InvariantCulture), validAfter.ToString(CultureInfo.InvariantCulture),
            validBefore.ToString(CultureInfo.InvariantCulture), nonce ?? RandomNonce());

    public static string Sign(X402Options o, Eip3009Authorization a, string key) =>
        new Eip712TypedDataSigner().SignTypedDataV4(TransferWithAuthorization.From3009(a), Eip3009TypedData.For(o), new EthECKey(key));

    /// <summary>The payer's EIP-712 signature of an EIP-3009 <c>CancelAuthorization(authorizer, nonce)</c>.</summary>
    public static string SignCancel(X402Options o, string nonce, string key) =>
        new Eip712TypedDataSigner().SignTypedDataV4(new CancelAuthorization { Authorizer = AddressOf(key), Nonce = nonce.HexToByteArray() }, new TypedData<Domain>
        {
            Domain = Eip3009TypedData.For(o).Domain,
            Types = MemberDescriptionFactory.GetTypesMemberDescription(typeof(Domain), typeof(CancelAuthorization)),
            PrimaryType = "CancelAuthorization",
        }, new EthECKey(key));

    public static JsonObject AuthorizationJson(Eip3009Authorization a) => new()
    {
        ["from"] = a.From, ["to"] = a.To, ["value"] = a.Value, ["validAfter"] = a.ValidAfter, ["validBefore"] = a.ValidBefore, ["nonce"] = a.Nonce,
    };

    /// <summary>A v2 PaymentPayload echoing <paramref name="accepted"/> (as the reference client does).</summary>
    public static JsonObject V2Payload(JsonObject accepted, Eip3009Authorization a, string signature, string? paymentIdentifier = null)
    {
        var payload = new JsonObject
        {
            ["x402Version"] = 2,
            ["resource"] = new JsonObject { ["url"] = "http://test/api/v1/x402/invoke" },
            ["accepted"] = accepted.DeepClone(),
            ["payload"] = new JsonObject { ["signature"] = signature, ["authorization"] = AuthorizationJson(a) },
        };
        if (paymentIdentifier is not null)
        {
            payload["extensions"] = new JsonObject { ["payment-identifier"] = new JsonObject { ["info"] = new JsonObject { ["id"] = paymentIdentifier } } };
        }

        return payload;
    }

    public static JsonObject V1Payload(string network, Eip3009Authorization a, string signature) => new()
    {
        ["x402Version"] = 1,
        ["scheme"] = "exact",
        ["network"] = network,
        ["payload"] = new JsonObject { ["signature"] = signature, ["authorization"] = AuthorizationJson(a) },
    };

    public static string Header(JsonObject payload) => X402Codec.Encode(payload);

    public static string ToHex(byte[] bytes) => bytes.ToHex(true);
}

[Struct("CancelAuthorization")]
internal sealed class CancelAuthorization
{
    [Parameter("address", "authorizer", 1)]
    public string Authorizer { get; set; } = "";

    [Parameter("bytes32", "nonce", 2)]
    public byte[] Nonce { get; set; } = [];
}
