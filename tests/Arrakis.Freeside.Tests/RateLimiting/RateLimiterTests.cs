using Arrakis.Freeside.RateLimiting;
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
}
