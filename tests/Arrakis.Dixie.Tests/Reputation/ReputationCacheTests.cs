using Arrakis.Dixie.Reputation;
using Arrakis.Shared.Caching;
using Microsoft.Extensions.Time.Testing;

namespace Arrakis.Dixie.Tests.Reputation;

public sealed class ReputationCacheTests
{
    [Fact]
    public async Task Expired_answers_are_dropped_so_distinct_keys_do_not_accumulate()
    {
        var time = new FakeTimeProvider(DateTimeOffset.FromUnixTimeMilliseconds(1_800_000_000_000));
        var cache = new ReputationCache(new MemoryInvalidationBus(), time, new ReputationOptions { CacheSeconds = 5 });
        var loads = new Dictionary<string, int>();
        Task<object> Load(string key)
        {
            loads[key] = loads.GetValueOrDefault(key) + 1;
            return Task.FromResult<object>(key);
        }

        // A scan of 100 routing keys, each asked once and never again.
        for (var i = 0; i < 100; i++)
        {
            await cache.GetOrAddAsync("query", "nft:scan-" + i, () => Load("scan-" + i));
        }

        time.Advance(TimeSpan.FromSeconds(3));
        await cache.GetOrAddAsync("query", "nft:fresh", () => Load("fresh"));
        Assert.Equal(101, cache.Count); // nothing has expired yet

        time.Advance(TimeSpan.FromSeconds(3)); // the scan expired at 5 s; nft:fresh lives until 8 s
        await cache.GetOrAddAsync("query", "nft:next", () => Load("next"));

        Assert.Equal(2, cache.Count);
        Assert.Equal("fresh", await cache.GetOrAddAsync("query", "nft:fresh", () => Load("fresh")));
        Assert.Equal(1, loads["fresh"]); // the live answer survived the sweep and was served from cache

        // Round after round of new keys: the cache holds about two TTLs' worth, not everything ever asked.
        for (var round = 0; round < 20; round++)
        {
            time.Advance(TimeSpan.FromSeconds(1));
            for (var i = 0; i < 50; i++)
            {
                await cache.GetOrAddAsync("models", $"nft:r{round}-{i}", () => Load("r"));
            }
        }

        Assert.InRange(cache.Count, 1, 500);
    }
}
