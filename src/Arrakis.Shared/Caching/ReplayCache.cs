using System.Collections.Concurrent;
using StackExchange.Redis;

namespace Arrakis.Shared.Caching;

/// <summary>Remembers token ids until they expire so a replayed token is refused.</summary>
public interface IReplayCache
{
    /// <summary>Returns false when <paramref name="key"/> was already seen and has not expired.</summary>
    Task<bool> TryRegisterAsync(string key, DateTimeOffset expiresAt, CancellationToken ct);
}

/// <summary>Single-process replay cache, used when Redis is not configured.</summary>
public sealed class MemoryReplayCache(TimeProvider time) : IReplayCache
{
    readonly ConcurrentDictionary<string, DateTimeOffset> _seen = new();
    long _calls;

    public Task<bool> TryRegisterAsync(string key, DateTimeOffset expiresAt, CancellationToken ct)
    {
        var now = time.GetUtcNow();
        if (Interlocked.Increment(ref _calls) % 1024 == 0)
        {
            foreach (var (k, exp) in _seen)
            {
                if (exp <= now)
                {
                    _seen.TryRemove(k, out _);
                }
            }
        }

        while (true)
        {
            if (_seen.TryAdd(key, expiresAt))
            {
                return Task.FromResult(true);
            }

            if (_seen.TryGetValue(key, out var existing) && existing > now)
            {
                return Task.FromResult(false);
            }

            if (_seen.TryUpdate(key, expiresAt, existing))
            {
                return Task.FromResult(true);
            }
        }
    }
}

/// <summary>Replay cache shared by every replica through Redis <c>SET NX PX</c>.</summary>
public sealed class RedisReplayCache(IConnectionMultiplexer redis, TimeProvider time) : IReplayCache
{
    public async Task<bool> TryRegisterAsync(string key, DateTimeOffset expiresAt, CancellationToken ct)
    {
        var ttl = expiresAt - time.GetUtcNow();
        if (ttl < TimeSpan.FromSeconds(1))
        {
            ttl = TimeSpan.FromSeconds(1);
        }

        return await redis.GetDatabase().StringSetAsync("arrakis:jti:" + key, "1", ttl, When.NotExists);
    }
}
