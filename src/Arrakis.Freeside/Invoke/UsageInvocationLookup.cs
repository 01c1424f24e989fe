using Arrakis.Freeside.Ledger;
using Arrakis.Freeside.Quality;

namespace Arrakis.Freeside.Invoke;

/// <summary>Answers "which pool and model served this?" for quality events, from the usage records finalize writes.</summary>
public sealed class UsageInvocationLookup(UsageStore usage) : IInvocationLookup
{
    public async Task<InvocationModel?> FindByTraceAsync(string communityId, string traceId, CancellationToken ct) =>
        Map(await usage.FindByTraceAsync(traceId, communityId, ct));

    public async Task<InvocationModel?> LatestForAgentAsync(string communityId, string routingKey, CancellationToken ct) =>
        Map(await usage.LatestForAgentAsync(routingKey, communityId, ct));

    static InvocationModel? Map(UsageEntry? e) => e is { Pool: { } pool, Model: { } model } ? new InvocationModel(pool, model) : null;
}
