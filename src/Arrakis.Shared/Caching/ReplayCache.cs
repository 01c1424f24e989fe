using System.Collections.Concurrent;
using StackExchange.Redis;

namespace Arrakis.Shared.Caching;

/// <summary>Remembers token ids until they expire so a replayed token is refused.</summary>
public interface IReplayCache
{
    /// <summary>Returns false when <paramref name="key"/> was already seen and has not expired.</summary>
    Task<bool> TryRegisterAsync(string key, DateTimeOffset expiresAt, CancellationToken ct);
}

/// <summary>
/// Single-process replay cache, used when Redis is not configured. Every 1,024th registration starts a sweep of the
/// expired ids on the thread pool, one at a time: a sweep walks every id held (at 1,000 calls a second with hour-long
/// tokens, millions), and the call that happened to trigger it used to wait for it.
/// </summary>
public sealed class MemoryReplayCache(TimeProvider time) : IReplayCache
{
    /// <summary>A sweep starts on every this-many-th registration (unless one is still running).</summary>
    public const int SweepEvery = 1024;

    readonly ConcurrentDictionary<string, DateTimeOffset> _seen = new();
    long _calls;
    int _sweeping;
    Task _lastSweep = Task.CompletedTask;

    /// <summary>Ids held, expired ones included until a sweep removes them.</summary>
    public int Count => _seen.Count;

    /// <summary>The sweep started last (completed when none has run); for tests.</summary>
    public Task LastSweep => Volatile.Read(ref _lastSweep);

    public Task<bool> TryRegisterAsync(string key, DateTimeOffset expiresAt, CancellationToken ct)
    {
        var now = time.GetUtcNow();
        if (Interlocked.Increment(ref _calls) % SweepEvery == 0 && Interlocked.CompareExchange(ref _sweeping, 1, 0) == 0)
        {
            Volatile.Write(ref _lastSweep, Task.Run(Sweep, CancellationToken.None));
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

    void Sweep()
    {
        try
        {
            var now = time.GetUtcNow();
            foreach (var (k, exp) in _seen)
            {
                if (exp <= now)
                {
                    // Only if it still holds this expiry: a registration may have renewed the id since the walk read it.
                    _seen.TryRemove(KeyValuePair.Create(k, exp));
                }
            }
        }
        finally
        {
            Volatile.Write(ref _sweeping, 0);
        }
    }
}

/// <summary>Replay cache shared by every replica through Redis <c>SET NX PX</c>.</summary>
public sealed class RedisReplayCache(IConnectionMultiplexer redis, RedisNamespace names, TimeProvider time) : IReplayCache
{
    public async Task<bool> TryRegisterAsync(string key, DateTimeOffset expiresAt, CancellationToken ct)
    {
        var ttl = expiresAt - time.GetUtcNow();
        if (ttl < TimeSpan.FromSeconds(1))
        {
            ttl = TimeSpan.FromSeconds(1);
        }

        return await redis.GetDatabase().StringSetAsync(names.Key("jti:" + key), "1", ttl, When.NotExists);
    }
}
