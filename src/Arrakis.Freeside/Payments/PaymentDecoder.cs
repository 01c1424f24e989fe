using System.Globalization;
using System.Numerics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Arrakis.Shared.Http;

namespace Arrakis.Freeside.Payments;

/// <summary>A rejected payment: the spec error code, an HTTP status, and a human detail.</summary>
public sealed record PaymentRejection(int Status, string Code, string Detail);

/// <summary>Strict decoding of <c>PAYMENT-SIGNATURE</c> (v2) and <c>X-PAYMENT</c> (v1): malformed input is a 400 with the spec's code.</summary>
public static partial class PaymentDecoder
{
    [GeneratedRegex(@"^0x[0-9a-fA-F]{40}\z")]
    private static partial Regex Address();

    [GeneratedRegex(@"^0x[0-9a-fA-F]{64}\z")]
    private static partial Regex Bytes32();

    [GeneratedRegex(@"^0x[0-9a-fA-F]{130}\z")]
    private static partial Regex Signature65();

    [GeneratedRegex(@"^[0-9]{1,78}\z")]
    private static partial Regex Uint();

    [GeneratedRegex(@"^[A-Za-z0-9+/]*={0,2}\z")]
    private static partial Regex Base64();

    public static (DecodedPayment? Payment, PaymentRejection? Error) Decode(string header, int expectedVersion)
    {
        header = header.Trim();
        byte[] bytes;
        if (header.Length == 0 || header.Length % 4 != 0 || !Base64().IsMatch(header))
        {
            return Bad(X402Errors.InvalidPayload, "The payment header is not valid base64.");
        }

        try
        {
            bytes = Convert.FromBase64String(header);
        }
        catch (FormatException)
        {
            return Bad(X402Errors.InvalidPayload, "The payment header is not valid base64.");
        }

        JsonObject root;
        try
        {
            using var doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { AllowTrailingCommas = false });
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                return Bad(X402Errors.InvalidPayload, "The payment payload must be a JSON object.");
            }

            // Before any field is read: a lone surrogate or bad UTF-8 throws when read, and a repeated key makes the
            // signed fields ambiguous (and throws when JsonNode builds its dictionary).
            if (JsonText.Check(doc.RootElement) is { } text)
            {
                return Bad(X402Errors.InvalidPayload, "The payment payload is not valid: " + text.Detail);
            }

            root = JsonObject.Create(doc.RootElement.Clone())!;
        }
        catch (JsonException)
        {
            return Bad(X402Errors.InvalidPayload, "The payment payload is not valid UTF-8 JSON.");
        }

        if (root["x402Version"] is not JsonValue version || !version.TryGetValue<int>(out var v) || v != expectedVersion)
        {
            return Bad(X402Errors.InvalidVersion, $"x402Version must be {expectedVersion} for this header.");
        }

        string? scheme, network, asset = null, payTo = null;
        if (v == 2)
        {
            if (root["accepted"] is not JsonObject accepted)
            {
                return Bad(X402Errors.InvalidPayload, "A v2 payload needs the accepted requirement.");
            }

            scheme = Str(accepted, "scheme");
            network = Str(accepted, "network");
            asset = Str(accepted, "asset");
            payTo = Str(accepted, "payTo");
            if (asset is null || payTo is null)
            {
                return Bad(X402Errors.InvalidPayload, "accepted.asset and accepted.payTo are required.");
            }
        }
        else
        {
            scheme = Str(root, "scheme");
            network = Str(root, "network");
        }

        if (scheme is null || network is null)
        {
            return Bad(X402Errors.InvalidPayload, "scheme and network are required.");
        }

        if (root["payload"] is not JsonObject payload || payload["authorization"] is not JsonObject auth)
        {
            return Bad(X402Errors.InvalidPayload, "payload.authorization is required (exact EVM, EIP-3009).");
        }

        var signature = Str(payload, "signature");
        var a = new Eip3009Authorization(Str(auth, "from") ?? "", Str(auth, "to") ?? "", Str(auth, "value") ?? "",
            Str(auth, "validAfter") ?? "", Str(auth, "validBefore") ?? "", Str(auth, "nonce") ?? "");
        if (signature is null || !Signature65().IsMatch(signature))
        {
            return Bad(X402Errors.InvalidPayload, "payload.signature must be a 65-byte 0x hex string.");
        }

        foreach (var (field, address) in new[] { ("from", a.From), ("to", a.To) })
        {
            if (!Address().IsMatch(address))
            {
                return Bad(X402Errors.InvalidPayload, $"payload.authorization.{field} must be a 0x-prefixed 20-byte hex address.");
            }
        }

        foreach (var (field, number) in new[] { ("value", a.Value), ("validAfter", a.ValidAfter), ("validBefore", a.ValidBefore) })
        {
            if (!IsUint256(number))
            {
                return Bad(X402Errors.InvalidPayload, $"payload.authorization.{field} must be a uint256 in decimal digits (0 <= {field} < 2^256).");
            }
        }

        if (!Bytes32().IsMatch(a.Nonce))
        {
            return Bad(X402Errors.InvalidPayload, "payload.authorization.nonce must be a 0x-prefixed 32-byte hex string.");
        }

        string? identifier = null;
        if (root["extensions"] is JsonObject ext && ext["payment-identifier"] is JsonObject pid)
        {
            identifier = Str(pid["info"] as JsonObject ?? pid, "id");
            if (identifier is null || identifier.Length is < 16 or > 128)
            {
                return Bad(X402Errors.InvalidPayload, "payment-identifier id must be 16 to 128 characters.");
            }
        }

        var hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(
            $"{signature.ToLowerInvariant()}|{a.From.ToLowerInvariant()}|{a.To.ToLowerInvariant()}|{a.Value}|{a.ValidAfter}|{a.ValidBefore}|{a.Nonce.ToLowerInvariant()}|{network}|{asset?.ToLowerInvariant()}")));
        return (new DecodedPayment(v, scheme, network, asset, payTo, signature, a, identifier, root, hash), null);
    }

    static readonly BigInteger Uint256Limit = BigInteger.One << 256;

    /// <summary>EIP-3009's uint256 fields: decimal digits only (no sign, space or exponent), below 2^256.</summary>
    static bool IsUint256(string text) =>
        Uint().IsMatch(text) && BigInteger.Parse(text, NumberStyles.None, CultureInfo.InvariantCulture) < Uint256Limit;

    static string? Str(JsonObject obj, string name) =>
        obj[name] is JsonValue value && value.TryGetValue<string>(out var s) ? s : null;

    static (DecodedPayment?, PaymentRejection?) Bad(string code, string detail) => (null, new PaymentRejection(400, code, detail));
}
