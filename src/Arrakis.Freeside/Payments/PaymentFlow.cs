using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Arrakis.Shared.Http;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Microsoft.IdentityModel.JsonWebTokens;

namespace Arrakis.Freeside.Payments;

/// <summary>
/// One paid request, start to finish: decode → verify locally → claim (unique keys) → pre-verify with the settler →
/// run the paid invoke → settle only on success → credit note → answer with the settlement header.
/// </summary>
public sealed class PaymentFlow(
    AuthorizationVerifier verifier,
    PaymentStore store,
    IPaymentSettler settler,
    IPayerCommunityResolver communities,
    PaymentMetrics metrics,
    IServiceProvider services,
    IOptions<X402Options> options,
    ILogger<PaymentFlow> logger)
{
    public async Task<IResult> HandlePaymentAsync(string header, int version, PaymentChallenge challenge, JsonObject body, JsonWebToken? token, HttpContext http, CancellationToken ct)
    {
        var (payment, malformed) = PaymentDecoder.Decode(header, version);
        if (payment is null)
        {
            metrics.Failed(malformed!.Code);
            PaymentLog.PaymentRejected(logger, malformed.Code);
            return Problems.Create(400, malformed.Code, malformed.Detail);
        }

        if (verifier.Verify(payment, challenge.AmountMicro) is { } rejection)
        {
            metrics.Failed(rejection.Code);
            PaymentLog.PaymentRejected(logger, rejection.Code);
            return PaymentRequirementsBuilder.ToResult(challenge, rejection.Code, rejection.Detail);
        }

        var o = options.Value;
        // The exact scheme settles the authorized value; a facilitator checks value == amount, so an overpayment (which
        // our local check allows, value >= amount) is presented to it as the settled amount.
        var requirement = (JsonObject)challenge.V2Requirement.DeepClone();
        requirement["amount"] = payment.Authorization.Value;
        var normalized = version == 2
            ? (JsonObject)payment.Raw.DeepClone()
            : new JsonObject
            {
                ["x402Version"] = 2,
                ["resource"] = challenge.V2["resource"]!.DeepClone(),
                ["accepted"] = requirement.DeepClone(),
                ["payload"] = payment.Raw["payload"]!.DeepClone(),
            };
        normalized["accepted"] = requirement.DeepClone();
        var row = new PaymentRow
        {
            Id = "pay_" + Guid.NewGuid().ToString("N"),
            Kind = "authorization",
            X402Version = version,
            Network = o.Network,
            Asset = o.Asset.ToLowerInvariant(),
            Payer = payment.Authorization.From.ToLowerInvariant(),
            Nonce = payment.Authorization.Nonce.ToLowerInvariant(),
            PaymentIdentifier = payment.PaymentIdentifier,
            PayloadHash = payment.PayloadHash,
            PayloadJson = normalized.ToJsonString(),
            RequirementJson = requirement.ToJsonString(),
            AmountRequiredMicro = challenge.AmountMicro,
            ValueMicro = long.Parse(payment.Authorization.Value, CultureInfo.InvariantCulture),
            CommunityId = await communities.ResolveAsync(token, payment.Authorization.From, ct),
            State = PaymentStates.Verified,
        };
        var (inserted, stored) = await store.ClaimAsync(row, ct);
        if (!inserted)
        {
            return Duplicate(stored, payment, http);
        }

        metrics.Created(row.Kind);
        PaymentLog.PaymentCreated(logger, row.Id, row.Payer, row.ValueMicro);
        var request = RequestFor(row, payment.Authorization, payment.Signature);
        if (await settler.PreVerifyAsync(request, ct) is { } refused)
        {
            return await FailAsync(row, refused.Code, refused.Status, ErrorBody(refused.Code, refused.Detail), ct,
                live: refused.Status == 402 ? PaymentRequirementsBuilder.ToResult(challenge, refused.Code, refused.Detail) : Problems.Create(refused.Status, refused.Code, refused.Detail));
        }

        if (http.RequestServices.GetService<IPaidInvocation>() is not { } invocation)
        {
            const string unavailable = "X402_INVOKE_UNAVAILABLE", detail = "The paid invoke pipeline is not available; nothing was settled.";
            return await FailAsync(row, "invoke_unavailable", 503, ErrorBody(unavailable, detail), ct, live: Problems.Create(503, unavailable, detail));
        }

        PaidInvocationResult result;
        // The request's INVOKE_COMPLETE line is logged from this report once it has been answered, after settlement.
        var call = Invoke.InvokeApi.PaidCallRuns(http);
        try
        {
            result = await invocation.RunAsync(new PaidInvocationRequest(row.Id, body, token, row.CommunityId, row.Payer, row.ValueMicro, call), ct);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            logger.LogError(ex, "x402 paid invoke threw");
            result = new PaidInvocationResult(false, 502, 0, ErrorBody(X402Errors.InvokeFailed, "The paid invoke failed."));
        }

        if (!result.Success)
        {
            // Never settle when the paid call fails: the payer keeps the funds (the authorization simply expires). The
            // stored answer is the one sent, so a replay gets the same error status.
            var failure = result.Body ?? ErrorBody(X402Errors.InvokeFailed, "The paid invoke failed; nothing was settled.");
            var retryAfter = result.RetryAfter is { } wait
                ? new KeyValuePair<string, string>("Retry-After", ((long)Math.Ceiling(wait.TotalSeconds)).ToString(CultureInfo.InvariantCulture))
                : (KeyValuePair<string, string>?)null;
            return await FailAsync(row, X402Errors.InvokeFailed, result.StatusCode >= 400 ? result.StatusCode : 502, failure, ct, header: retryAfter);
        }

        var cost = Math.Clamp(result.CostMicro, 0, row.ValueMicro);
        var invokeBody = result.Body?.ToJsonString();
        if (!await store.MarkSettlingAsync(row.Id, cost, invokeBody, ct))
        {
            // Recovery (or another worker) already finished this row while the invoke ran: it is not ours to settle.
            var current = await store.GetAsync(row.Id, ct);
            PaymentLog.SettlementSkipped(logger, row.Id, current?.State ?? "missing");
            call.Outcome = SettlementOutcome(current?.State);
            return StoredResult(current);
        }

        row.State = PaymentStates.Settling;
        row.CostMicro = cost;
        row.InvokeBody = invokeBody;
        var answer = await SettleAndFinishAsync(row, request, ct);
        call.Outcome = SettlementOutcome(row.State); // the state the answer was given in (StoredAsync keeps row.State in step)
        return answer;
    }

    /// <summary>
    /// The INVOKE_COMPLETE outcome of a paid call that succeeded, by the state of the payment its request was answered
    /// with: <c>paid</c> once settled; <c>settlement_pending</c> while it is still settling (503 settlement_pending, or
    /// 409 while recovery or another worker has it); else <c>settlement_failed</c> (the paid response was withheld).
    /// </summary>
    static string SettlementOutcome(string? state) => state switch
    {
        PaymentStates.Settled => "paid",
        PaymentStates.Settling or PaymentStates.Verified => "settlement_pending",
        _ => "settlement_failed",
    };

    /// <summary>Settles a row in <c>settling</c> and finishes it (used by requests and by crash recovery).</summary>
    public async Task<IResult> SettleAndFinishAsync(PaymentRow row, SettlementRequest request, CancellationToken ct)
    {
        var outcome = await settler.SettleAsync(request, (tx, raw) => store.RecordTransactionAsync(row.Id, tx, raw, ct), ct);
        if (outcome.Success)
        {
            return await FinishAsync(row, outcome.Transaction!, ct);
        }

        switch (outcome.ErrorReason)
        {
            case X402Errors.SettlementPending:
                return Problems.Create(503, X402Errors.SettlementPending, "Settlement was submitted but is not confirmed yet; retry the same payment to get the result.",
                    new Dictionary<string, object?> { ["paymentId"] = row.Id, ["transaction"] = outcome.Transaction });
            case X402Errors.PaymentNotSettling:
                // Recovery or another worker owns the row now; its stored answer is the payment's answer.
                PaymentLog.SettlementNotRecorded(logger, row.Id, outcome.Transaction ?? "", outcome.ErrorReason);
                return await StoredAsync(row, ct);
            case X402Errors.TransactionClaimed:
                // One transaction, one credit note: the payment that holds it keeps it, this one fails without credit.
                PaymentLog.SettlementNotRecorded(logger, row.Id, outcome.Transaction ?? "", outcome.ErrorReason);
                var claimed = ErrorBody(X402Errors.TransactionClaimed, "The settlement transaction already belongs to another payment; no credit note was issued.");
                return await FailAsync(row, X402Errors.TransactionClaimed, 409, claimed, ct);
        }

        var reason = outcome.ErrorReason ?? X402Errors.UnexpectedSettleError;
        var body = ErrorBody(reason, "Settlement failed; the paid response is withheld and no credit note was issued.");
        return await FailAsync(row, reason, 402, body, ct, header: SettlementHeader(row, success: false, transaction: "", reason));
    }

    /// <summary>settling → settled with exactly one credit note; replays the stored result if another worker finished first.</summary>
    public async Task<IResult> FinishAsync(PaymentRow row, string transaction, CancellationToken ct)
    {
        var remainder = Math.Max(0, row.ValueMicro - (row.CostMicro ?? 0));
        // A payment made without a community token has nowhere to put its remainder: the note says so instead of
        // naming an amount no lot holds.
        var credit = row.CommunityId is null ? 0 : remainder;
        var noteId = "cn_" + row.Id;
        var lotId = credit == 0 ? null : "x402:" + row.Id;
        JsonObject body = row.InvokeBody is { } text && JsonNode.Parse(text) is JsonObject obj ? obj
            : row.InvokeBody is { } other ? new JsonObject { ["result"] = JsonNode.Parse(other) } : [];
        var note = new JsonObject
        {
            ["id"] = noteId,
            ["amountMicro"] = credit,
            ["lotId"] = lotId,
            ["transaction"] = transaction,
            ["communityId"] = row.CommunityId,
            ["payer"] = row.Payer,
        };
        if (remainder > credit)
        {
            note["uncreditedMicro"] = remainder - credit;
            note["detail"] = $"The payment came without a community's bearer token, so its remainder of {remainder - credit} micro-USD "
                + "(paid minus what the call cost) was not credited to anyone. Pay with a user token to receive the remainder as credit.";
        }

        body["creditNote"] = note;
        body["payment"] = new JsonObject
        {
            ["id"] = row.Id,
            ["state"] = PaymentStates.Settled,
            ["transaction"] = transaction,
            ["network"] = row.Network,
            ["payer"] = row.Payer,
            ["paidMicro"] = row.ValueMicro,
            ["costMicro"] = row.CostMicro ?? 0,
        };
        var json = body.ToJsonString();
        bool settled;
        try
        {
            settled = await store.MarkSettledAsync(row.Id, transaction, noteId, lotId, credit, 200, json, ct);
        }
        catch (Exception ex) when (Arrakis.Shared.Storage.Database.IsUniqueViolation(ex))
        {
            // Another payment row already owns this transaction hash: one credit note per transaction.
            PaymentLog.SettlementNotRecorded(logger, row.Id, transaction, X402Errors.TransactionClaimed);
            var dup = ErrorBody(X402Errors.TransactionClaimed, "This transaction already produced a credit note.");
            return await FailAsync(row, X402Errors.TransactionClaimed, 409, dup, ct);
        }

        if (!settled)
        {
            return await StoredAsync(row, ct);
        }

        row.State = PaymentStates.Settled;
        row.TxHash = transaction;
        row.CreditLotId = lotId;
        row.CreditMicro = credit;
        row.CreditNoteId = noteId;
        row.ResponseJson = json;
        row.ResponseStatus = 200;
        metrics.Finished(row.Kind);
        PaymentLog.PaymentFinished(logger, row.Id, transaction);
        await GrantAsync(row, ct);
        return Replay(row);
    }

    /// <summary>Grants a settled row's credit note through the ledger sink; idempotent on the lot id.</summary>
    public async Task GrantAsync(PaymentRow row, CancellationToken ct)
    {
        if (row.CreditLotId is null || row.CommunityId is null || row.CreditMicro is not > 0 || row.CreditNoteId is null || row.TxHash is null)
        {
            return;
        }

        if (services.GetService<ICreditNoteSink>() is not { } sink)
        {
            PaymentLog.CreditNoteUngranted(logger, row.CreditNoteId, "no ICreditNoteSink is registered");
            return;
        }

        var note = new CreditNote(row.CreditNoteId, row.Id, row.CommunityId, row.CreditLotId, row.CreditMicro.Value, row.TxHash, row.Payer,
            DateTimeOffset.FromUnixTimeMilliseconds(row.CreatedAt).AddYears(1));
        try
        {
            await sink.GrantAsync(note, ct);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            PaymentLog.CreditNoteUngranted(logger, row.CreditNoteId, ex.Message);
            return;
        }

        if (await store.MarkCreditGrantedAsync(row.Id, ct))
        {
            metrics.Minted(note.AmountMicro);
            PaymentLog.CreditsMinted(logger, note.Id, note.AmountMicro, note.CommunityId);
        }
    }

    IResult Duplicate(PaymentRow existing, DecodedPayment payment, HttpContext http)
    {
        if (payment.PaymentIdentifier is not null && existing.PaymentIdentifier == payment.PaymentIdentifier && existing.PayloadHash != payment.PayloadHash)
        {
            return Problems.Create(409, X402Errors.PaymentIdentifierConflict, "This payment-identifier was used with a different payload.");
        }

        if (existing.PayloadHash != payment.PayloadHash)
        {
            metrics.Failed(X402Errors.NonceUsed);
            return Problems.Create(409, X402Errors.NonceUsed, "This authorization nonce was already used by another payment.");
        }

        if (existing.State is PaymentStates.Settled or PaymentStates.Failed)
        {
            Invoke.InvokeApi.Replays(http); // its INVOKE_COMPLETE line says replayed, whatever status the stored answer has
            return Replay(existing);
        }

        return Problems.Create(409, X402Errors.DuplicateSettlement, "This payment is already being settled; retry for the stored result.",
            new Dictionary<string, object?> { ["paymentId"] = existing.Id, ["state"] = existing.State });
    }

    /// <summary>The stored answer of a finished payment, with its settlement header.</summary>
    public IResult Replay(PaymentRow row)
    {
        var status = (int)(row.ResponseStatus ?? 500);
        var body = row.ResponseJson is { } j ? JsonNode.Parse(j) : ErrorBody(X402Errors.InvalidTransactionState, "No stored response.");
        var header = row.State switch
        {
            PaymentStates.Settled => SettlementHeader(row, true, row.TxHash ?? "", null),
            // A settlement that failed (the row had reached settling, so it has a cost, and was answered 402) was
            // answered with a failure header; the replay gets the same one.
            PaymentStates.Failed when row.CostMicro is not null && row.ResponseStatus == 402 => SettlementHeader(row, false, "", row.Error),
            _ => null,
        };
        return Json(status, body, header);
    }

    KeyValuePair<string, string>? SettlementHeader(PaymentRow row, bool success, string transaction, string? reason)
    {
        if (row.Kind != "authorization")
        {
            return null;
        }

        var o = options.Value;
        var response = new JsonObject
        {
            ["success"] = success,
            ["transaction"] = transaction,
            ["network"] = row.X402Version == 1 ? o.V1Network : o.Network,
            ["payer"] = row.Payer,
        };
        if (reason is not null)
        {
            response["errorReason"] = reason;
        }

        if (success)
        {
            response["amount"] = row.ValueMicro.ToString(CultureInfo.InvariantCulture);
        }

        return new(row.X402Version == 1 ? X402Headers.XPaymentResponse : X402Headers.PaymentResponse, X402Codec.Encode(response));
    }

    public SettlementRequest RequestFor(PaymentRow row, Eip3009Authorization? authorization = null, string? signature = null)
    {
        var payload = JsonNode.Parse(row.PayloadJson)!.AsObject();
        if (authorization is null || signature is null)
        {
            var p = payload["payload"]!.AsObject();
            var a = p["authorization"]!.AsObject();
            authorization = new Eip3009Authorization(a["from"]!.GetValue<string>(), a["to"]!.GetValue<string>(), a["value"]!.GetValue<string>(),
                a["validAfter"]!.GetValue<string>(), a["validBefore"]!.GetValue<string>(), a["nonce"]!.GetValue<string>());
            signature = p["signature"]!.GetValue<string>();
        }

        return new SettlementRequest(row.Id, payload, JsonNode.Parse(row.RequirementJson)!.AsObject(), authorization, signature, row.TxHash, row.RawTx);
    }

    /// <summary>
    /// The answer a payment's row holds now: its stored response once finished, 409 while another worker has it; with
    /// <paramref name="row"/>'s state brought in step with it.
    /// </summary>
    async Task<IResult> StoredAsync(PaymentRow row, CancellationToken ct)
    {
        var current = await store.GetAsync(row.Id, ct);
        row.State = current?.State ?? row.State;
        return StoredResult(current);
    }

    IResult StoredResult(PaymentRow? row) => row switch
    {
        { State: PaymentStates.Settled or PaymentStates.Failed } done => Replay(done),
        { } busy => Problems.Create(409, X402Errors.DuplicateSettlement, "This payment is being settled by another worker; retry for the stored result.",
            new Dictionary<string, object?> { ["paymentId"] = busy.Id, ["state"] = busy.State }),
        null => Problems.Create(500, X402Errors.InvalidTransactionState, "The payment vanished."),
    };

    /// <summary>
    /// Fails the row with the answer it will replay (<paramref name="status"/>, <paramref name="body"/>) and answers with it
    /// (or <paramref name="live"/>). When the row had already moved on (recovery or another worker finished it), nothing
    /// is overwritten and the answer is what that row holds.
    /// </summary>
    async Task<IResult> FailAsync(PaymentRow row, string reason, int status, JsonNode body, CancellationToken ct, IResult? live = null,
        KeyValuePair<string, string>? header = null)
    {
        var json = body.ToJsonString();
        if (!await store.MarkFailedAsync(row.Id, reason, status, json, ct))
        {
            return await StoredAsync(row, ct);
        }

        row.State = PaymentStates.Failed;
        row.Error = reason;
        row.ResponseStatus = status;
        row.ResponseJson = json;
        metrics.Failed(reason);
        PaymentLog.PaymentFailed(logger, row.Id, reason);
        return live ?? Json(status, body, header);
    }

    static JsonObject ErrorBody(string code, string detail) => new() { ["error"] = code, ["detail"] = detail };

    static IResult Json(int status, JsonNode? body, KeyValuePair<string, string>? header) => new JsonNodeResult(status, body, header);

    sealed class JsonNodeResult(int status, JsonNode? body, KeyValuePair<string, string>? header) : IResult
    {
        public async Task ExecuteAsync(HttpContext httpContext)
        {
            if (header is { } h)
            {
                httpContext.Response.Headers[h.Key] = h.Value;
                httpContext.Response.Headers.AccessControlExposeHeaders = h.Key;
            }

            httpContext.Response.StatusCode = status;
            httpContext.Response.ContentType = "application/json";
            await httpContext.Response.WriteAsync(body?.ToJsonString() ?? "{}", httpContext.RequestAborted);
        }
    }
}
