using Arrakis.Shared.Caching;
using Microsoft.Extensions.Time.Testing;

namespace Arrakis.Shared.Tests.Tokens;

public sealed class MemoryReplayCacheTests
{
    [Fact]
    public async Task A_seen_id_is_refused_until_it_expires_and_a_sweep_drops_only_the_expired_ids()
    {
        var ct = TestContext.Current.CancellationToken;
        var time = new FakeTimeProvider(new DateTimeOffset(2026, 11, 27, 0, 0, 0, TimeSpan.Zero));
        var cache = new MemoryReplayCache(time);
        var calls = 0;
        Task<bool> RegisterAsync(string id, TimeSpan life)
        {
            calls++;
            return cache.TryRegisterAsync(id, time.GetUtcNow() + life, ct);
        }

        Assert.True(await RegisterAsync("long", TimeSpan.FromMinutes(5)));
        Assert.False(await RegisterAsync("long", TimeSpan.FromMinutes(5))); // a replay
        const int Short = 1_500;
        for (var i = 0; i < Short; i++)
        {
            Assert.True(await RegisterAsync("short-" + i, TimeSpan.FromSeconds(10)));
        }

        await cache.LastSweep; // the sweep at call 1,024 found nothing expired yet
        Assert.Equal(Short + 1, cache.Count);

        time.Advance(TimeSpan.FromSeconds(30)); // the short ids expire, "long" does not
        Assert.False(await RegisterAsync("long", TimeSpan.FromMinutes(5)));
        var live = 0;
        while (calls < 2 * MemoryReplayCache.SweepEvery) // up to the call that starts the next sweep
        {
            Assert.True(await RegisterAsync("late-" + live++, TimeSpan.FromMinutes(5)));
        }

        await cache.LastSweep;
        Assert.Equal(1 + live, cache.Count); // "long" and the late ids; every short one is gone
        Assert.True(await RegisterAsync("short-0", TimeSpan.FromSeconds(10))); // an expired id is accepted again
        Assert.False(await RegisterAsync("late-0", TimeSpan.FromMinutes(5)));
    }
}
