using System.Text.Json;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Identity;
using Arrakis.Freeside.Invoke;
using Arrakis.Shared.Http;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.IdentityModel.JsonWebTokens;

namespace Arrakis.Freeside.Payments;

/// <summary><c>POST /api/v1/x402/invoke</c>: pay-per-request invoke over x402 (v1 and v2), plus the legacy proof path.</summary>
public static class PaymentsApi
{
    public const string InvokePath = "/api/v1/x402/invoke";

    public static IEndpointRouteBuilder MapPaymentsApi(this IEndpointRouteBuilder app)
    {
        // An invoke route: every answer logs its INVOKE_COMPLETE line (InvokeApi.LogAnsweredBeforeTheHandlerAsync).
        app.MapPost(InvokePath, InvokeAsync).WithMetadata(InvokeApi.InvokeEndpoint.Instance).WithTags("Payments");
        return app;
    }

    static async Task<IResult> InvokeAsync(HttpContext http, PaymentQuote quote, PaymentRequirementsBuilder requirements, PaymentFlow flow, LegacyProof legacy,
        TokenVerifier verifier, TokenPolicies policies, CancellationToken ct)
    {
        JsonDocument doc;
        try
        {
            doc = await JsonDocument.ParseAsync(http.Request.Body, cancellationToken: ct);
        }
        catch (JsonException)
        {
            return NotAnInvokeRequest();
        }

        JsonObject body;
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                return NotAnInvokeRequest();
            }

            // Checked before the 402 and before any payment is read, so a bad body never claims (and spends) an authorization.
            if (JsonText.Check(doc.RootElement) is { } text)
            {
                return Problems.Invalid(text.Field, text.Detail);
            }

            body = JsonObject.Create(doc.RootElement.Clone())!;
        }

        // The whole invoke request is checked before the 402 and before any payment is read, as the paid call will check
        // it: a payer must not be asked for (or spend) an authorization on a request that cannot run.
        if (InvokeRequestParser.Parse(System.Text.Encoding.UTF8.GetBytes(body.ToJsonString())).Error is { } invalid)
        {
            return Problems.Invalid(invalid.Field, invalid.Detail);
        }

        var (amount, error) = quote.WorstCase(body);
        if (error is not null)
        {
            return Problems.Invalid(error.Field, error.Detail);
        }

        var challenge = requirements.Build(amount, $"{http.Request.Scheme}://{http.Request.Host}{http.Request.Path}");
        var headers = http.Request.Headers;
        if (headers[X402Headers.PaymentSignature].Count == 0 && headers[X402Headers.XPayment].Count == 0 && headers[X402Headers.XPaymentProof].Count == 0)
        {
            // The token is verified only with a payment: x402 clients resend it on the paid retry, and a user token's
            // jti is single-use, so the unpaid 402 must not consume it.
            return PaymentRequirementsBuilder.ToResult(challenge, X402Errors.PaymentRequired, "Payment is required: send PAYMENT-SIGNATURE (x402 v2) or X-PAYMENT (v1).");
        }

        JsonWebToken? token = null;
        if (http.Request.Headers.Authorization.ToString() is { Length: > 0 } authorization)
        {
            var bearer = authorization.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) ? authorization[7..].Trim() : null;
            var verified = await verifier.VerifyAsync(bearer, policies[IdentitySetup.UserPolicy], ct);
            if (!verified.Succeeded)
            {
                return Problems.Unauthorized("The bearer token is not valid: " + verified.Failure);
            }

            token = verified.Token;
        }

        if (headers[X402Headers.PaymentSignature].ToString() is { Length: > 0 } v2)
        {
            return await flow.HandlePaymentAsync(v2, 2, challenge, body, token, http, ct);
        }

        if (headers[X402Headers.XPayment].ToString() is { Length: > 0 } v1)
        {
            return await flow.HandlePaymentAsync(v1, 1, challenge, body, token, http, ct);
        }

        if (headers[X402Headers.XPaymentProof].ToString() is { Length: > 0 } proof)
        {
            InvokeApi.LogsItsOwnLine(http); // a proof buys no call: not an invoke, so no INVOKE_COMPLETE line
            return await legacy.HandleAsync(proof, headers[X402Headers.XPaymentProofSignature].ToString(), challenge, token, ct);
        }

        return PaymentRequirementsBuilder.ToResult(challenge, X402Errors.PaymentRequired, "Payment is required: send PAYMENT-SIGNATURE (x402 v2) or X-PAYMENT (v1).");
    }

    static IResult NotAnInvokeRequest() =>
        Problems.Invalid("body", "The body must be a JSON invoke request {prompt|messages, model?, max_tokens?}.");
}
