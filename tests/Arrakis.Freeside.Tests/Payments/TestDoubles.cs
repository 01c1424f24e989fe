using System.Collections.Concurrent;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Payments;

namespace Arrakis.Freeside.Tests.Payments;

/// <summary>
/// TEST DOUBLE of our own invoke pipeline, used only by payment-flow tests: returns a fixed metered cost, fails like a
/// provider error when the prompt contains "provider-error", and reports a failure without an error status when it
/// contains "soft-failure". <see cref="During"/> runs while the invoke is "in flight" (to race it with recovery).
/// </summary>
internal sealed class FixedCostInvocation(long costMicro) : IPaidInvocation
{
    int _calls;

    public int Calls => _calls;

    public Func<PaidInvocationRequest, CancellationToken, Task>? During { get; set; }

    public async Task<PaidInvocationResult> RunAsync(PaidInvocationRequest request, CancellationToken ct)
    {
        Interlocked.Increment(ref _calls);
        if (During is { } during)
        {
            await during(request, ct);
        }

        var prompt = request.Body["prompt"]?.GetValue<string>() ?? "";
        if (prompt.Contains("provider-error", StringComparison.Ordinal))
        {
            return new PaidInvocationResult(false, 502, 0, new JsonObject { ["error"] = "PROVIDER_ERROR", ["detail"] = "upstream 500" });
        }

        if (prompt.Contains("soft-failure", StringComparison.Ordinal))
        {
            return new PaidInvocationResult(false, 200, 0, new JsonObject { ["error"] = "PROVIDER_ERROR", ["detail"] = "failed without an error status" });
        }

        return new PaidInvocationResult(true, 200, costMicro, new JsonObject
        {
            ["content"] = "paid answer to: " + prompt,
            ["cost_micro"] = costMicro,
        });
    }
}

/// <summary>TEST DOUBLE of the ledger's GrantAsync (the ledger is another feature): records each lot once, by lot id.</summary>
internal sealed class RecordingCreditSink : ICreditNoteSink
{
    public ConcurrentDictionary<string, CreditNote> Lots { get; } = new();

    public Task GrantAsync(CreditNote note, CancellationToken ct)
    {
        Lots.TryAdd(note.LotId, note);
        return Task.CompletedTask;
    }
}
