using System.Globalization;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Options;

namespace Arrakis.Freeside.Payments;

/// <summary>One 402 challenge: what to pay, where, and how it is spelled in v1 and v2.</summary>
public sealed record PaymentChallenge(long AmountMicro, string ResourceUrl, string Description, JsonObject V2, JsonObject V1Body, IReadOnlyDictionary<string, string> Headers)
{
    /// <summary>The v2 <c>accepts[0]</c> requirement, as sent to a facilitator.</summary>
    public JsonObject V2Requirement => (JsonObject)V2["accepts"]![0]!;
}

/// <summary>
/// Builds x402 payment requirements for an amount in micro-USD (= USDC atomic units). Reusable by invoke so its
/// 402 <c>TIER_UPGRADE_REQUIRED</c> carries the same requirements (<see cref="Apply"/> + <see cref="BodyFields"/>).
/// </summary>
public sealed class PaymentRequirementsBuilder(IOptions<X402Options> options)
{
    public const string DefaultDescription = "Pay-per-request inference on the Arrakis gateway";

    public X402Options Options => options.Value;

    public PaymentChallenge Build(long amountMicro, string resourceUrl, string? description = null, string? error = null)
    {
        var o = options.Value;
        description ??= DefaultDescription;
        var amount = amountMicro.ToString(CultureInfo.InvariantCulture);
        var extra = new JsonObject { ["name"] = o.AssetName, ["version"] = o.AssetVersion };
        var v2 = new JsonObject
        {
            ["x402Version"] = 2,
            ["error"] = error ?? "PAYMENT-SIGNATURE header is required",
            ["resource"] = new JsonObject { ["url"] = resourceUrl, ["description"] = description, ["mimeType"] = "application/json" },
            ["accepts"] = new JsonArray(new JsonObject
            {
                ["scheme"] = "exact",
                ["network"] = o.Network,
                ["amount"] = amount,
                ["asset"] = o.Asset,
                ["payTo"] = o.PayTo,
                ["maxTimeoutSeconds"] = o.MaxTimeoutSeconds,
                ["extra"] = extra.DeepClone(),
            }),
        };
        var v1 = new JsonObject
        {
            ["x402Version"] = 1,
            ["error"] = error ?? "X-PAYMENT header is required",
            ["accepts"] = new JsonArray(V1Requirement(o, amount, resourceUrl, description)),
        };
        foreach (var (k, v) in BodyFields(amountMicro))
        {
            v1[k] = v;
        }

        var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase)
        {
            [X402Headers.XPaymentRequired] = "true",
            [X402Headers.XPrice] = amount,
        };
        if (o.AdvertiseV2)
        {
            headers[X402Headers.PaymentRequired] = X402Codec.Encode(v2);
        }

        return new PaymentChallenge(amountMicro, resourceUrl, description, v2, v1, headers);
    }

    /// <summary>The v1 <c>accepts[]</c> entry (spec v1 table: maxAmountRequired, resource, description are required).</summary>
    public static JsonObject V1Requirement(X402Options o, string amount, string resourceUrl, string description) => new()
    {
        ["scheme"] = "exact",
        ["network"] = o.V1Network,
        ["maxAmountRequired"] = amount,
        ["asset"] = o.Asset,
        ["payTo"] = o.PayTo,
        ["resource"] = resourceUrl,
        ["description"] = description,
        ["mimeType"] = "application/json",
        ["outputSchema"] = null,
        ["maxTimeoutSeconds"] = o.MaxTimeoutSeconds,
        ["extra"] = new JsonObject { ["name"] = o.AssetName, ["version"] = o.AssetVersion },
    };

    /// <summary>Flat fields the launch gate reads from a 402 body (<c>paymentAddress</c>, <c>amount</c>), for any 402 that carries requirements.</summary>
    public Dictionary<string, JsonNode?> BodyFields(long amountMicro)
    {
        var o = options.Value;
        return new Dictionary<string, JsonNode?>
        {
            ["paymentAddress"] = o.PayTo,
            ["amount"] = amountMicro.ToString(CultureInfo.InvariantCulture),
            ["asset"] = o.Asset,
            ["network"] = o.Network,
        };
    }

    /// <summary>Writes the challenge headers onto a response (invoke's 402 uses this beside its own problem body).</summary>
    public static void Apply(PaymentChallenge challenge, HttpResponse response)
    {
        foreach (var (k, v) in challenge.Headers)
        {
            response.Headers[k] = v;
        }
    }

    /// <summary>The full 402: v2 header, v1 body with the gate's flat fields and an <c>error</c> code.</summary>
    public static IResult ToResult(PaymentChallenge challenge, string errorCode = X402Errors.PaymentRequired, string? detail = null) =>
        new ChallengeResult(challenge, errorCode, detail);

    sealed class ChallengeResult(PaymentChallenge challenge, string errorCode, string? detail) : IResult
    {
        public async Task ExecuteAsync(HttpContext httpContext)
        {
            Apply(challenge, httpContext.Response);
            var body = (JsonObject)challenge.V1Body.DeepClone();
            body["error"] = errorCode;
            if (detail is not null)
            {
                body["detail"] = detail;
            }

            httpContext.Response.StatusCode = StatusCodes.Status402PaymentRequired;
            httpContext.Response.ContentType = "application/json";
            await httpContext.Response.WriteAsync(body.ToJsonString(), httpContext.RequestAborted);
        }
    }
}
