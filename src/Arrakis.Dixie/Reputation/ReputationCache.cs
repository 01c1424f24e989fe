using System.Collections.Concurrent;
using Arrakis.Shared.Caching;

namespace Arrakis.Dixie.Reputation;

/// <summary>
/// Short-TTL cache of query answers per routing key. Every write publishes the key on the invalidation bus (Redis
/// pub/sub across replicas when configured), and each replica drops its entry. A generation counter stops a read
/// that raced a write from re-inserting the stale answer. Expired entries are swept at most once per TTL, so keys that
/// are asked once and never again do not pile up.
/// </summary>
public sealed class ReputationCache
{
    public const string Channel = "dixie.reputation";

    readonly ConcurrentDictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    readonly IInvalidationBus _bus;
    readonly TimeProvider _time;
    readonly TimeSpan _ttl;
    long _generation;
    long _nextSweepMs;

    sealed record Entry(object Value, long ExpiresAtMs);

    public ReputationCache(IInvalidationBus bus, TimeProvider time, ReputationOptions options)
    {
        _bus = bus;
        _time = time;
        _ttl = TimeSpan.FromSeconds(options.CacheSeconds);
        bus.Subscribe(Channel, Drop);
    }

    public async Task<T> GetOrAddAsync<T>(string kind, string routingKey, Func<Task<T>> load)
        where T : class
    {
        var key = kind + "|" + routingKey;
        var now = _time.GetUtcNow().ToUnixTimeMilliseconds();
        SweepExpired(now);
        if (_ttl > TimeSpan.Zero && _entries.TryGetValue(key, out var hit) && hit.ExpiresAtMs > now && hit.Value is T value)
        {
            return value;
        }

        var generation = Interlocked.Read(ref _generation);
        var loaded = await load();
        if (_ttl > TimeSpan.Zero)
        {
            _entries[key] = new Entry(loaded, now + (long)_ttl.TotalMilliseconds);
            if (Interlocked.Read(ref _generation) != generation)
            {
                // A write landed while we read: our answer may predate it.
                _entries.TryRemove(key, out _);
            }
        }

        return loaded;
    }

    /// <summary>Entries held, live or expired and not yet swept.</summary>
    internal int Count => _entries.Count;

    /// <summary>Drops expired entries; one caller per TTL wins the sweep, the rest return at once.</summary>
    void SweepExpired(long now)
    {
        var due = Interlocked.Read(ref _nextSweepMs);
        if (_ttl <= TimeSpan.Zero || now < due
            || Interlocked.CompareExchange(ref _nextSweepMs, now + (long)_ttl.TotalMilliseconds, due) != due)
        {
            return;
        }

        foreach (var entry in _entries)
        {
            if (entry.Value.ExpiresAtMs <= now)
            {
                // Removes only this entry: a fresh answer stored for the key since we read it stays.
                _entries.TryRemove(entry);
            }
        }
    }

    /// <summary>Drops the key here at once, then tells the other replicas.</summary>
    public async Task InvalidateAsync(string routingKey)
    {
        Drop(routingKey);
        try
        {
            await _bus.PublishAsync(Channel, routingKey);
        }
        catch (Exception ex) when (ex is StackExchange.Redis.RedisException or TimeoutException)
        {
            // Other replicas fall back to the TTL; this replica is already fresh.
        }
    }

    void Drop(string routingKey)
    {
        Interlocked.Increment(ref _generation);
        foreach (var key in _entries.Keys)
        {
            if (key.EndsWith("|" + routingKey, StringComparison.Ordinal))
            {
                _entries.TryRemove(key, out _);
            }
        }
    }
}
