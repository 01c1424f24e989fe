using StackExchange.Redis;

namespace Arrakis.Shared.Caching;

/// <summary>Cache-invalidation messages between replicas: Redis pub/sub when configured, in-process otherwise.</summary>
public interface IInvalidationBus
{
    Task PublishAsync(string channel, string message);

    void Subscribe(string channel, Action<string> handler);
}

public sealed class MemoryInvalidationBus : IInvalidationBus
{
    readonly Lock _lock = new();
    readonly Dictionary<string, List<Action<string>>> _handlers = [];

    public Task PublishAsync(string channel, string message)
    {
        List<Action<string>> handlers;
        lock (_lock)
        {
            handlers = _handlers.TryGetValue(channel, out var list) ? [.. list] : [];
        }

        foreach (var handler in handlers)
        {
            handler(message);
        }

        return Task.CompletedTask;
    }

    public void Subscribe(string channel, Action<string> handler)
    {
        lock (_lock)
        {
            if (!_handlers.TryGetValue(channel, out var list))
            {
                _handlers[channel] = list = [];
            }

            list.Add(handler);
        }
    }
}

public sealed class RedisInvalidationBus(IConnectionMultiplexer redis, RedisNamespace names) : IInvalidationBus
{
    public Task PublishAsync(string channel, string message) =>
        redis.GetSubscriber().PublishAsync(RedisChannel.Literal(names.Key("inval:" + channel)), message);

    /// <summary>
    /// Subscribes now, or when Redis answers again: the multiplexer records the subscription before it sends it and
    /// re-sends every recorded one on each reconnect. A service started while Redis was unreachable threw here instead,
    /// from the constructor of the cache that subscribes, so every request that used the cache (dixie's anonymous
    /// reputation query, which needs no Redis) got a 503 until Redis returned, and each added one more handler.
    /// Returns without waiting for Redis's answer. The synchronous subscribe blocked its thread for the round trip (up to
    /// the 5 s sync timeout) inside the DI container's lock on the cache, on the first request: under a burst on a fresh
    /// replica every other request blocked on that lock, the starved thread pool could not read Redis's answer, and the
    /// replay checks queued meanwhile timed out (503 "redis is not reachable").
    /// </summary>
    public void Subscribe(string channel, Action<string> handler)
    {
        Task sent;
        try
        {
            sent = redis.GetSubscriber().SubscribeAsync(RedisChannel.Literal(names.Key("inval:" + channel)), (_, value) => handler(value.ToString()));
        }
        catch (Exception ex) when (ex is RedisConnectionException or RedisTimeoutException)
        {
            return; // recorded, not yet sent: the reconnect sends it. Until then this replica's entries expire by their TTL.
        }

        // Likewise when the send fails later; observed so the failure is not an unobserved task exception.
        _ = sent.ContinueWith(t => t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }
}
