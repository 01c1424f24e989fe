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
public sealed class PaidInvocation(PoolCatalog catalog, FinnClient finn, Microsoft.Extensions.Options.IOptions<Payments.X402Options> options,
    InvokeMetrics metrics, Microsoft.Extensions.Logging.ILogger<PaidInvocation> logger) : IPaidInvocation
{
    public async Task<PaidInvocationResult> RunAsync(PaidInvocationRequest request, CancellationToken ct)
    {
        var started = System.Diagnostics.Stopwatch.StartNew();
        var traceId = System.Diagnostics.Activity.Current?.TraceId.ToHexString() ?? Guid.NewGuid().ToString("N");
        var community = request.CommunityId ?? "";

        // A paid call is an invoke too: one INVOKE_COMPLETE line each (DESIGN §8), and the invoke metrics for one that ran.
        PaidInvocationResult Refused(int status, string error, string detail, string? field, string? pool)
        {
            logger.InvokeComplete(status, "rejected", pool, null, started.ElapsedMilliseconds, community, traceId, 0, 0, 0, false);
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

        // A call that throws logs its line too, with the status its caller is answered: the 502 X402_INVOKE_FAILED the
        // payment flow answers for a paid invoke that threw; a cancellation goes on to the error handler: 499 when the
        // client left, else 500. It ran, so it counts in the invoke metrics as the invoke route's failed calls do.
        bool Threw(Exception ex)
        {
            var (status, outcome) = ex is not OperationCanceledException ? (502, "error")
                : ct.IsCancellationRequested ? (499, "client_disconnected") : (500, "error");
            metrics.Completed(pool.Id, outcome, started.Elapsed.TotalMilliseconds, 0);
            logger.InvokeComplete(status, outcome, pool.Id, null, started.ElapsedMilliseconds, community, traceId, 0, 0, 0, false);
            return false;
        }

        FinnInvokeResult? result;
        UpstreamError? error;
        try
        {
            var caller = new FinnCaller("x402:" + request.Payer, request.CommunityId ?? "x402", catalog.LowestTierFor(pool.Id) ?? Tier.Enterprise, [pool.Id], "x402:" + request.PaymentId);
            (result, error) = await finn.InvokeAsync(new FinnInvokeRequest(parsed.Messages, pool.Id, maxTokens, parsed.Agent, false, traceId), caller, ct);
        }
        catch (Exception ex) when (Threw(ex))
        {
            throw; // never runs: the filter logs INVOKE_COMPLETE and lets the exception go on
        }

        if (error is not null)
        {
            metrics.Completed(pool.Id, "upstream_failed", started.Elapsed.TotalMilliseconds, 0);
            logger.InvokeComplete(error.Status, "upstream_failed", pool.Id, null, started.ElapsedMilliseconds, community, traceId, 0, 0, 0, false);
            // finn's Retry-After (its 503 "no healthy model") is passed on, as the invoke route does.
            return Failure(error.Status, error.Error, error.Detail, null) with { RetryAfter = error.RetryAfter };
        }

        var cost = Math.Clamp(result!.CostMicro, 0, worst);
        metrics.Completed(pool.Id, "paid", started.Elapsed.TotalMilliseconds, cost);
        logger.InvokeComplete(200, "paid", pool.Id, result.Model, started.ElapsedMilliseconds, community, traceId, cost,
            result.Usage.PromptTokens, result.Usage.CompletionTokens, false);
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
