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
        var model = body["model"] is JsonValue m && m.TryGetValue<string>(out var s) ? s : null;
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

        var messages = new List<ChatMessage>();
        if (body["messages"] is JsonArray array)
        {
            foreach (var item in array)
            {
                if (item is not JsonObject msg || msg["content"] is not JsonValue c || !c.TryGetValue<string>(out var content))
                {
                    return (0, new InvokeRequestError("messages", "messages[] entries need string role and content."));
                }

                messages.Add(new ChatMessage(msg["role"] is JsonValue r && r.TryGetValue<string>(out var role) ? role : "user", content));
            }
        }
        else if (body["prompt"] is JsonValue p && p.TryGetValue<string>(out var prompt))
        {
            messages.Add(new ChatMessage("user", prompt));
        }
        else
        {
            return (0, new InvokeRequestError("prompt", "The body needs prompt or messages."));
        }

        var maxTokens = pool.DefaultMaxTokens;
        if (body["max_tokens"] is JsonValue mt)
        {
            if (!mt.TryGetValue<int>(out maxTokens) || maxTokens < 1 || maxTokens > pool.MaxTokensLimit)
            {
                return (0, new InvokeRequestError("max_tokens", $"max_tokens must be 1..{pool.MaxTokensLimit}."));
            }
        }

        var cost = PoolCatalog.CostMicro(pool, TokenMath.InputUpperBound(messages), maxTokens);
        return (Math.Max(cost, o.MinimumAmountMicro), null);
    }
}
