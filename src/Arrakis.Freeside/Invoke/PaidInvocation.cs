using System.Text.Json;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Communities;
using Arrakis.Freeside.Ledger;
using Arrakis.Freeside.Payments;
using Arrakis.Shared.Contracts;
using Microsoft.IdentityModel.JsonWebTokens;

namespace Arrakis.Freeside.Invoke;

/// <summary>
/// Runs an x402-paid invoke: the payment covers this one call (and unlocks its pool), so no community budget is
/// reserved; finn meters it and the unused part of the payment comes back as a credit note.
/// </summary>
public sealed class PaidInvocation(PoolCatalog catalog, FinnClient finn, Microsoft.Extensions.Options.IOptions<Payments.X402Options> options) : IPaidInvocation
{
    public async Task<PaidInvocationResult> RunAsync(PaidInvocationRequest request, CancellationToken ct)
    {
        var started = System.Diagnostics.Stopwatch.StartNew();
        var traceId = System.Diagnostics.Activity.Current?.TraceId.ToHexString() ?? Guid.NewGuid().ToString("N");
        // A paid call is an invoke too: its request logs one INVOKE_COMPLETE line (DESIGN §8), and the invoke metrics
        // count it once it ran. Both are written when the request has been answered, after settlement
        // (InvokeApi.LogAnsweredBeforeTheHandlerAsync), from what the call reports here.
        var report = request.Report ?? new PaidCallReport();
        report.CommunityId = request.CommunityId ?? "";
        report.TraceId = traceId;

        PaidInvocationResult Refused(int status, string error, string detail, string? field, string? pool)
        {
            report.Pool = pool;
            report.Outcome = "rejected";
            return Failure(status, error, detail, field);
        }

        var (parsed, invalid) = InvokeRequestParser.Parse(JsonSerializer.SerializeToUtf8Bytes(request.Body));
        if (invalid is not null)
        {
            return Refused(400, "INVALID_REQUEST", invalid.Detail, invalid.Field, null);
        }

        var poolId = parsed!.Pool ?? options.Value.DefaultPool; // the pool the 402 quote priced (PaymentQuote)
        if (!catalog.Pools.TryGetValue(poolId, out var pool))
        {
            return Refused(400, "INVALID_REQUEST", $"Unknown pool '{poolId}'.", "model", null);
        }

        var maxTokens = Math.Min(parsed.MaxTokens ?? pool.DefaultMaxTokens, pool.MaxTokensLimit);
        var worst = PoolCatalog.CostMicro(pool, TokenMath.InputUpperBound(parsed.Messages), maxTokens);
        if (worst > request.MaxCostMicro)
        {
            return Refused(402, "PAYMENT_TOO_SMALL", $"This request may cost {worst} micro-USD; the payment covers {request.MaxCostMicro}.", "amount", pool.Id);
        }

        // From here it runs, and counts in the invoke metrics as the invoke route's calls do, even when it throws: its
        // line then has the status its caller is answered (the 502 X402_INVOKE_FAILED the payment flow answers for a
        // paid invoke that threw; a cancellation goes on to the error handler: 499 when the client left, else 500).
        report.Pool = pool.Id;
        report.Ran = true;
        var caller = new FinnCaller("x402:" + request.Payer, request.CommunityId ?? "x402", catalog.LowestTierFor(pool.Id) ?? Tier.Enterprise, [pool.Id], "x402:" + request.PaymentId);
        FinnInvokeResult? result;
        UpstreamError? error;
        try
        {
            (result, error) = await finn.InvokeAsync(new FinnInvokeRequest(parsed.Messages, pool.Id, maxTokens, parsed.Agent, false, traceId), caller, ct);
        }
        finally
        {
            report.CallMs = started.Elapsed.TotalMilliseconds;
        }

        if (error is not null)
        {
            report.Outcome = "upstream_failed";
            // finn's Retry-After (its 503 "no healthy model") is passed on, as the invoke route does.
            return Failure(error.Status, error.Error, error.Detail, null) with { RetryAfter = error.RetryAfter };
        }

        var cost = Math.Clamp(result!.CostMicro, 0, worst);
        report.Outcome = "paid"; // until the payment flow says how the settlement ended
        report.Model = result.Model;
        report.CostMicro = cost;
        report.PromptTokens = result.Usage.PromptTokens;
        report.CompletionTokens = result.Usage.CompletionTokens;
        var body = new JsonObject
        {
            ["content"] = result.Content,
            ["model"] = result.Model,
            ["pool"] = result.Pool,
            ["provider"] = result.Provider,
            ["usage"] = new JsonObject { ["prompt_tokens"] = result.Usage.PromptTokens, ["completion_tokens"] = result.Usage.CompletionTokens },
            ["cost_micro"] = cost,
            ["cost_cents"] = cost / 10_000,
            ["trace_id"] = traceId,
            ["routing"] = JsonSerializer.SerializeToNode(result.Routing),
            ["simulated"] = result.Simulated,
        };
        return new PaidInvocationResult(true, 200, cost, body);
    }

    static PaidInvocationResult Failure(int status, string error, string detail, string? field) =>
        new(false, status, 0, new JsonObject { ["status"] = status, ["error"] = error, ["detail"] = detail, ["field"] = field });
}

/// <summary>Credit notes become x402 credit lots in the ledger; granting is idempotent on the lot id.</summary>
public sealed class LedgerCreditNoteSink(Ledger.Ledger ledger) : ICreditNoteSink
{
    public async Task GrantAsync(CreditNote note, CancellationToken ct)
    {
        if (note.AmountMicro <= 0)
        {
            return;
        }

        var result = await ledger.GrantAsync(note.CommunityId, note.LotId, note.AmountMicro, "x402", note.ExpiresAt, ct);
        if (result.Status is not (GrantStatus.Granted or GrantStatus.Duplicate))
        {
            throw new InvalidOperationException($"Credit note {note.Id} could not be granted: {result.Status} {result.Detail}");
        }
    }
}

/// <summary>
/// A payment credits the token's community: its tenant's, as on every other route. A <c>community_id</c> claim does not
/// choose it (a token naming another community than its tenant's credited that one).
/// </summary>
public sealed class TenantPayerCommunityResolver(CommunityStore communities) : IPayerCommunityResolver
{
    public async Task<string?> ResolveAsync(JsonWebToken? userToken, string payerAddress, CancellationToken ct) =>
        userToken is not null && userToken.TryGetPayloadValue<string>("tenant_id", out var tenant) && !string.IsNullOrEmpty(tenant)
            ? await communities.ResolveTenantAsync(tenant, ct)
            : null;
}
