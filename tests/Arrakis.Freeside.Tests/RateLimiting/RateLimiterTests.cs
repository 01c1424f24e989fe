using Arrakis.Freeside.RateLimiting;
using Arrakis.Shared.Caching;
using Arrakis.Shared.Contracts;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Time.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;

namespace Arrakis.Freeside.Tests.RateLimiting;

public sealed class RateLimiterTests
{
    [Fact]
    public async Task Free_defaults_let_the_gate_traffic_through_then_answer_429_with_headers()
    {
        var time = new FakeTimeProvider(new DateTimeOffset(2026, 3, 1, 0, 0, 5, TimeSpan.Zero));
        var limiter = new RateLimiter(new MemoryRateLimitCounter(), new RateLimitOptions(), time);
        for (var i = 0; i < 35; i++)
        {
            Assert.True((await limiter.CheckAsync(Tier.Free, "c1", "u1")).Allowed, $"request {i}");
        }

        RateLimitDecision last = null!;
        for (var i = 35; i < 121; i++)
        {
            last = await limiter.CheckAsync(Tier.Free, "c1", "u1");
        }

        Assert.False(last.Allowed);
        var http = new DefaultHttpContext { RequestServices = new ServiceCollection().AddLogging().AddProblemDetails().BuildServiceProvider() };
        http.Response.Body = new MemoryStream();
        await RateLimiter.Problem(last).ExecuteAsync(http);
        Assert.Equal(429, http.Response.StatusCode);
        Assert.Equal("55", http.Response.Headers.RetryAfter.ToString());
        Assert.Equal("120", http.Response.Headers["X-RateLimit-Limit"].ToString());
        Assert.Equal("0", http.Response.Headers["X-RateLimit-Remaining"].ToString());
        Assert.Equal("55", http.Response.Headers["X-RateLimit-Reset"].ToString());
        Assert.Contains("w=60", http.Response.Headers["X-RateLimit-Policy"].ToString());
        http.Response.Body.Position = 0;
        Assert.Contains("RATE_LIMITED", await new StreamReader(http.Response.Body).ReadToEndAsync(TestContext.Current.CancellationToken));

        time.Advance(TimeSpan.FromSeconds(55));
        var allowed = await limiter.CheckAsync(Tier.Free, "c1", "u1");
        Assert.True(allowed.Allowed);
        var headers = RateLimiter.Headers(allowed);
        Assert.False(headers.ContainsKey("Retry-After")); // an answer that was not refused tells no one to wait
        Assert.Equal(("120", "119", "60"), (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"], headers["X-RateLimit-Reset"]));
        Assert.True((await limiter.CheckAsync(Tier.Free, "c2", "u9")).Allowed);
        _ = NullLogger.Instance;
    }

    /// <summary>
    /// Per-user limits keep one user from taking the community's whole minute. The community's window was counted first,
    /// so every request a user sent past their own limit, each refused with 429, still used up the community's: one
    /// client retrying in a loop locked out every other user of its community. Counted the same on one process (memory)
    /// and across replicas (two limiters on one Redis).
    /// </summary>
    [Theory]
    [InlineData("memory")]
    [InlineData("redis")]
    public async Task Requests_refused_by_a_users_own_limit_do_not_use_up_the_communitys(string store)
    {
        if (store == "redis" && TestStorage.Redis is null)
        {
            Assert.Skip("Redis not configured (set ARRAKIS_TEST_REDIS)");
        }

        var ct = TestContext.Current.CancellationToken;
        var time = new FakeTimeProvider(new DateTimeOffset(2026, 3, 1, 0, 0, 5, TimeSpan.Zero));
        var options = new RateLimitOptions { Pro = new TierLimits { CommunityPerMinute = 10, UserPerMinute = 4 } };
        await using var redis = store == "redis" ? await StackExchange.Redis.ConnectionMultiplexer.ConnectAsync(TestStorage.Redis!) : null;
        var names = new RedisNamespace($"t-{Guid.NewGuid():N}:");
        IRateLimitCounter memory = new MemoryRateLimitCounter();
        var replicas = Enumerable.Range(0, 2)
            .Select(_ => new RateLimiter(redis is null ? memory : new RedisRateLimitCounter(redis, names), options, time))
            .ToArray();

        // u1 sends 10 in the minute, alternating replicas: its first 4 pass, the other 6 are refused by its own limit.
        var u1 = new List<RateLimitDecision>();
        for (var i = 0; i < 10; i++)
        {
            u1.Add(await replicas[i % 2].CheckAsync(Tier.Pro, "c1", "u1", ct));
        }

        Assert.Equal(4, u1.Count(d => d.Allowed));
        Assert.All(u1.Skip(4), d => Assert.Contains("scope=user", d.Policy, StringComparison.Ordinal));

        // The community has served 4 of its 10: u2 gets its own 4, and u3 the 2 left before the community's limit.
        var u2 = new List<RateLimitDecision>();
        var u3 = new List<RateLimitDecision>();
        for (var i = 0; i < 4; i++)
        {
            u2.Add(await replicas[i % 2].CheckAsync(Tier.Pro, "c1", "u2", ct));
        }

        for (var i = 0; i < 4; i++)
        {
            u3.Add(await replicas[(i + 1) % 2].CheckAsync(Tier.Pro, "c1", "u3", ct));
        }

        Assert.All(u2, d => Assert.True(d.Allowed, d.Policy));
        Assert.Equal([true, true, false, false], u3.Select(d => d.Allowed));
        Assert.All(u3.Skip(2), d => Assert.Contains("scope=community", d.Policy, StringComparison.Ordinal));
        Assert.Equal(0, u3[1].Remaining); // the community's last request: what is left is the community's, not u3's 2

        // The next minute starts every window afresh.
        time.Advance(TimeSpan.FromSeconds(55));
        Assert.True((await replicas[0].CheckAsync(Tier.Pro, "c1", "u1", ct)).Allowed);
    }
}
