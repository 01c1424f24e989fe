using System.Text.Json;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Invoke;
using Arrakis.Shared.Contracts;
using Microsoft.Extensions.Options;

namespace Arrakis.Freeside.Payments;

/// <summary>The worst-case cost of an invoke body in micro-USD: input upper bound plus the output cap at the pool's list price.</summary>
public sealed class PaymentQuote(PoolCatalog catalog, IOptions<X402Options> options)
{
    public (long AmountMicro, InvokeRequestError? Error) WorstCase(JsonObject body)
    {
        var o = options.Value;
        // The messages the paid call runs (PaidInvocation parses the same way): with both messages and prompt, both count.
        var (request, invalid) = InvokeRequestParser.Parse(JsonSerializer.SerializeToUtf8Bytes(body));
        if (invalid is not null)
        {
            return (0, invalid);
        }

        var model = request!.Pool;
        if (model is not null && !catalog.Pools.ContainsKey(model))
        {
            // Pricing an unknown pool as the default one would quote a call that then fails as INVALID_REQUEST.
            return (0, new InvokeRequestError("model", $"model names an unknown pool '{model}'. Pools: {string.Join(", ", catalog.Pools.Keys)}."));
        }

        var pool = catalog.Pools.TryGetValue(model ?? o.DefaultPool, out var found) ? found : null;
        if (pool is null)
        {
            return (0, new InvokeRequestError("model", $"No pool prices '{model ?? o.DefaultPool}'."));
        }

        var maxTokens = request.MaxTokens ?? pool.DefaultMaxTokens;
        if (maxTokens > pool.MaxTokensLimit)
        {
            return (0, new InvokeRequestError("max_tokens", $"max_tokens must be 1..{pool.MaxTokensLimit}."));
        }

        var cost = PoolCatalog.CostMicro(pool, TokenMath.InputUpperBound(request.Messages), maxTokens);
        return (Math.Max(cost, o.MinimumAmountMicro), null);
    }
}
