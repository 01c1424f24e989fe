using System.Collections.Concurrent;
using System.Globalization;
using Arrakis.Shared.Caching;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Http;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using StackExchange.Redis;

namespace Arrakis.Freeside.RateLimiting;

/// <summary>Requests per minute for one tier, per community and per user.</summary>
public sealed class TierLimits
{
    public int CommunityPerMinute { get; set; }

    public int UserPerMinute { get; set; }
}

public sealed class RateLimitOptions
{
    public const string Section = "RateLimits";

    /// <summary>Generous for free: the launch gate sends ~35 requests a minute from one free token, in bursts of 10.</summary>
    public TierLimits Free { get; set; } = new() { CommunityPerMinute = 120, UserPerMinute = 120 };

    public TierLimits Pro { get; set; } = new() { CommunityPerMinute = 600, UserPerMinute = 300 };

    public TierLimits Enterprise { get; set; } = new() { CommunityPerMinute = 3000, UserPerMinute = 1000 };

    public TierLimits For(Tier tier) => tier switch
    {
        Tier.Pro => Pro,
        Tier.Enterprise => Enterprise,
        _ => Free,
    };
}

public sealed record RateLimitDecision(bool Allowed, int Limit, int Remaining, TimeSpan RetryAfter, string Policy);

/// <summary>Fixed one-minute windows counted in Redis (shared by replicas) or in memory (one process).</summary>
public interface IRateLimitCounter
{
    /// <summary>Adds one hit to <paramref name="key"/>'s window and returns the count including it.</summary>
    Task<long> HitAsync(string key, TimeSpan window, CancellationToken ct);
}

internal sealed class MemoryRateLimitCounter : IRateLimitCounter
{
    readonly ConcurrentDictionary<string, StrongBox> _counts = new();

    public Task<long> HitAsync(string key, TimeSpan window, CancellationToken ct)
    {
        if (_counts.Count > 100_000)
        {
            _counts.Clear(); // old windows; a reset only ever allows more
        }

        return Task.FromResult(Interlocked.Increment(ref _counts.GetOrAdd(key, _ => new StrongBox()).Value));
    }

    sealed class StrongBox
    {
        public long Value;
    }
}

internal sealed class RedisRateLimitCounter(IConnectionMultiplexer redis, RedisNamespace names) : IRateLimitCounter
{
    const string Script = "local n = redis.call('INCR', KEYS[1]) if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return n";

    public async Task<long> HitAsync(string key, TimeSpan window, CancellationToken ct) =>
        (long)await redis.GetDatabase().ScriptEvaluateAsync(Script, [new RedisKey(names.Key("ratelimit:" + key))], [(long)window.TotalMilliseconds * 2]);
}

/// <summary>Per-community and per-user request limits by tier.</summary>
public sealed class RateLimiter(IRateLimitCounter counter, RateLimitOptions options, TimeProvider time)
{
    static readonly TimeSpan Window = TimeSpan.FromMinutes(1);

    /// <summary>
    /// Counts one request against the community's and the user's limits of <paramref name="tier"/> for this minute.
    /// <paramref name="bucket"/> keeps a route's count apart from the invoke route's (quality events have their own).
    /// </summary>
    public Task<RateLimitDecision> CheckAsync(Tier tier, string communityId, string? userId, CancellationToken ct = default) =>
        CheckAsync(tier, communityId, userId, "", ct);

    /// <inheritdoc cref="CheckAsync(Tier, string, string?, CancellationToken)"/>
    public async Task<RateLimitDecision> CheckAsync(Tier tier, string communityId, string? userId, string bucket, CancellationToken ct)
    {
        var limits = options.For(tier);
        var now = time.GetUtcNow();
        var window = now.ToUnixTimeMilliseconds() / (long)Window.TotalMilliseconds;
        var retry = TimeSpan.FromMilliseconds((window + 1) * (long)Window.TotalMilliseconds - now.ToUnixTimeMilliseconds());
        // The user's window first: a request refused by the user's own limit must not count in the community's, or one
        // user retrying past their limit would use up the minute of every other user of the community. (A request the
        // community refuses still counts in its user's window: that costs only this user, in a minute that is full anyway.)
        RateLimitDecision? perUser = null;
        if (!string.IsNullOrEmpty(userId))
        {
            var user = await counter.HitAsync($"{bucket}u:{communityId}:{userId}:{window}", Window, ct);
            perUser = Decide(user, limits.UserPerMinute, retry, $"{limits.UserPerMinute};w=60;scope=user");
            if (!perUser.Allowed)
            {
                return perUser;
            }
        }

        var community = await counter.HitAsync($"{bucket}c:{communityId}:{window}", Window, ct);
        var decision = Decide(community, limits.CommunityPerMinute, retry, $"{limits.CommunityPerMinute};w=60;scope=community");
        return decision.Allowed && perUser is not null && perUser.Remaining < decision.Remaining ? perUser : decision;
    }

    static RateLimitDecision Decide(long count, int limit, TimeSpan retry, string policy) =>
        new(count <= limit, limit, (int)Math.Max(0, limit - count), retry, policy);

    /// <summary>The 429 <c>RATE_LIMITED</c> problem with <c>Retry-After</c> and the <c>X-RateLimit-*</c> headers.</summary>
    public static IResult Problem(RateLimitDecision decision) =>
        Problems.Create(429, "RATE_LIMITED", $"Rate limit of {decision.Limit} requests per minute reached; retry in {Math.Ceiling(decision.RetryAfter.TotalSeconds)} s.",
            new Dictionary<string, object?> { ["policy"] = decision.Policy }, Headers(decision));

    /// <summary>
    /// The <c>X-RateLimit-*</c> headers every answer carries (<c>Reset</c>: seconds until the window resets), and
    /// <c>Retry-After</c> only on a refusal: on any other answer it would tell clients and proxies to wait.
    /// </summary>
    public static Dictionary<string, string> Headers(RateLimitDecision decision)
    {
        var reset = Math.Max(1, (int)Math.Ceiling(decision.RetryAfter.TotalSeconds)).ToString(CultureInfo.InvariantCulture);
        var headers = new Dictionary<string, string>
        {
            ["X-RateLimit-Limit"] = decision.Limit.ToString(CultureInfo.InvariantCulture),
            ["X-RateLimit-Remaining"] = decision.Remaining.ToString(CultureInfo.InvariantCulture),
            ["X-RateLimit-Reset"] = reset,
            ["X-RateLimit-Policy"] = decision.Policy,
        };
        if (!decision.Allowed)
        {
            headers["Retry-After"] = reset;
        }

        return headers;
    }
}

public static class RateLimitingSetup
{
    public static WebApplicationBuilder AddRateLimits(this WebApplicationBuilder builder)
    {
        var options = builder.Configuration.GetSection(RateLimitOptions.Section).Get<RateLimitOptions>() ?? new RateLimitOptions();
        foreach (var (name, t) in new[] { ("Free", options.Free), ("Pro", options.Pro), ("Enterprise", options.Enterprise) })
        {
            if (t.CommunityPerMinute <= 0 || t.UserPerMinute <= 0)
            {
                throw new InvalidOperationException($"RateLimits:{name} limits must be positive (e.g. RateLimits:{name}:CommunityPerMinute=120).");
            }
        }

        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton<IRateLimitCounter>(sp => sp.GetService<IConnectionMultiplexer>() is { } redis
            ? new RedisRateLimitCounter(redis, sp.GetRequiredService<RedisNamespace>())
            : new MemoryRateLimitCounter());
        builder.Services.AddSingleton<RateLimiter>();
        return builder;
    }
}
