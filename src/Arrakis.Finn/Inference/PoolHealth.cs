using Arrakis.Shared.Contracts;
using Arrakis.Shared.Hosting;

namespace Arrakis.Finn.Inference;

/// <summary>Per-pool health from the model breakers: degraded while any model's breaker is not closed, never unhealthy for that alone.</summary>
internal sealed class PoolHealth(PoolCatalog catalog, ModelBreakers breakers) : IHealthContributor
{
    public string Name => "pools";

    public Task<HealthCheckResult> CheckAsync(CancellationToken ct)
    {
        var pools = new Dictionary<string, object>(StringComparer.Ordinal);
        var degraded = new List<string>();
        foreach (var (id, pool) in catalog.Pools.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            var models = pool.Models.ToDictionary(m => m.Id, m => breakers.StateOf(m.Id), StringComparer.Ordinal);
            var closed = models.Values.Count(s => s == BreakerState.Closed);
            var status = closed == models.Count ? "healthy" : models.Values.Any(s => s != BreakerState.Open) ? "degraded" : "unavailable";
            if (status != "healthy")
            {
                degraded.Add(id);
            }

            pools[id] = new
            {
                status,
                models = models.ToDictionary(kv => kv.Key, kv => new { provider = pool.Models.First(m => m.Id == kv.Key).Provider, breaker = StateName(kv.Value) }),
            };
        }

        var result = degraded.Count == 0
            ? new HealthCheckResult(HealthState.Healthy, null, pools)
            : new HealthCheckResult(HealthState.Degraded, "circuit open in pools: " + string.Join(", ", degraded), pools);
        return Task.FromResult(result);
    }

    static string StateName(BreakerState s) => s switch
    {
        BreakerState.Open => "open",
        BreakerState.HalfOpen => "half_open",
        _ => "closed",
    };
}
