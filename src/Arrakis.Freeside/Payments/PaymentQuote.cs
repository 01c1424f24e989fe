using System.Text.Json.Nodes;
using Arrakis.Shared.Contracts;
using Microsoft.Extensions.Options;

namespace Arrakis.Freeside.Payments;

/// <summary>The worst-case cost of an invoke body in micro-USD: input upper bound plus the output cap at the pool's list price.</summary>
public sealed class PaymentQuote(PoolCatalog catalog, IOptions<X402Options> options)
{
    public (long AmountMicro, string? Error) WorstCase(JsonObject body)
    {
        var o = options.Value;
        var model = body["model"] is JsonValue m && m.TryGetValue<string>(out var s) ? s : null;
        var pool = model is not null && catalog.Pools.TryGetValue(model, out var named) ? named
            : catalog.Pools.TryGetValue(o.DefaultPool, out var fallback) ? fallback : null;
        if (pool is null)
        {
            return (0, $"No pool prices '{model ?? o.DefaultPool}'.");
        }

        var messages = new List<ChatMessage>();
        if (body["messages"] is JsonArray array)
        {
            foreach (var item in array)
            {
                if (item is not JsonObject msg || msg["content"] is not JsonValue c || !c.TryGetValue<string>(out var content))
                {
                    return (0, "messages[] entries need string role and content.");
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
            return (0, "The body needs prompt or messages.");
        }

        var maxTokens = pool.DefaultMaxTokens;
        if (body["max_tokens"] is JsonValue mt)
        {
            if (!mt.TryGetValue<int>(out maxTokens) || maxTokens < 1 || maxTokens > pool.MaxTokensLimit)
            {
                return (0, $"max_tokens must be 1..{pool.MaxTokensLimit}.");
            }
        }

        var cost = PoolCatalog.CostMicro(pool, TokenMath.InputUpperBound(messages), maxTokens);
        return (Math.Max(cost, o.MinimumAmountMicro), null);
    }
}
