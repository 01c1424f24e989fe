using System.Collections.Concurrent;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Payments;

namespace Arrakis.Freeside.Tests.Payments;

/// <summary>
/// TEST DOUBLE of our own invoke pipeline, used only by payment-flow tests: returns a fixed metered cost, and fails
/// like a provider error when the prompt contains "provider-error".
/// </summary>
internal sealed class FixedCostInvocation(long costMicro) : IPaidInvocation
{
    int _calls;

    public int Calls => _calls;

    public Task<PaidInvocationResult> RunAsync(PaidInvocationRequest request, CancellationToken ct)
    {
        Interlocked.Increment(ref _calls);
        var prompt = request.Body["prompt"]?.GetValue<string>() ?? "";
        if (prompt.Contains("provider-error", StringComparison.Ordinal))
        {
            return Task.FromResult(new PaidInvocationResult(false, 502, 0, new JsonObject { ["error"] = "PROVIDER_ERROR", ["detail"] = "upstream 500" }));
        }

        return Task.FromResult(new PaidInvocationResult(true, 200, costMicro, new JsonObject
        {
            ["content"] = "paid answer to: " + prompt,
            ["cost_micro"] = costMicro,
        }));
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
