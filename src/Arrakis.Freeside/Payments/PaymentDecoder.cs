using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Arrakis.Freeside.Payments;

/// <summary>A rejected payment: the spec error code, an HTTP status, and a human detail.</summary>
public sealed record PaymentRejection(int Status, string Code, string Detail);

/// <summary>Strict decoding of <c>PAYMENT-SIGNATURE</c> (v2) and <c>X-PAYMENT</c> (v1): malformed input is a 400 with the spec's code.</summary>
public static partial class PaymentDecoder
{
    [GeneratedRegex("^0x[0-9a-fA-F]{40}$")]
    private static partial Regex Address();

    [GeneratedRegex("^0x[0-9a-fA-F]{64}$")]
    private static partial Regex Bytes32();

    [GeneratedRegex("^0x[0-9a-fA-F]{130}$")]
    private static partial Regex Signature65();

    [GeneratedRegex("^[0-9]{1,78}$")]
    private static partial Regex Uint();

    [GeneratedRegex("^[A-Za-z0-9+/]*={0,2}$")]
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
            var text = new UTF8Encoding(false, true).GetString(bytes);
            if (JsonNode.Parse(text, documentOptions: new JsonDocumentOptions { AllowTrailingCommas = false }) is not JsonObject obj)
            {
                return Bad(X402Errors.InvalidPayload, "The payment payload must be a JSON object.");
            }

            root = obj;
        }
        catch (Exception ex) when (ex is JsonException or DecoderFallbackException)
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

        if (!Address().IsMatch(a.From) || !Address().IsMatch(a.To) || !Uint().IsMatch(a.Value) || !Uint().IsMatch(a.ValidAfter)
            || !Uint().IsMatch(a.ValidBefore) || !Bytes32().IsMatch(a.Nonce))
        {
            return Bad(X402Errors.InvalidPayload, "authorization needs from/to addresses, decimal value/validAfter/validBefore and a 32-byte nonce.");
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

    static string? Str(JsonObject obj, string name) =>
        obj[name] is JsonValue value && value.TryGetValue<string>(out var s) ? s : null;

    static (DecodedPayment?, PaymentRejection?) Bad(string code, string detail) => (null, new PaymentRejection(400, code, detail));
}
