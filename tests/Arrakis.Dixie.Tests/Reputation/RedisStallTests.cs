using System.Diagnostics;
using System.Net;
using System.Text.Json.Nodes;
using Arrakis.Shared.Caching;
using Microsoft.Extensions.Logging.Abstractions;

namespace Arrakis.Dixie.Tests.Reputation;

/// <summary>
/// Redis that is connected but does not answer (frozen here; on a fresh replica under a burst, a starved thread pool
/// that cannot read its answers looks the same). Nothing on the way to the first request may wait for it: a synchronous
/// subscribe on the first request held the DI container's lock on the reputation cache for up to the sync timeout, every
/// other request of a burst blocked behind it, and the replay checks queued meanwhile timed out as 503s.
/// </summary>
public sealed class RedisStallTests
{
    /// <summary>Longer than the test waits: a call that waits for Redis's answer blocks for this long.</summary>
    const int SyncTimeoutMs = 30_000;

    static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Subscribing_to_invalidations_does_not_wait_for_redis_and_the_subscription_takes_effect_once_it_answers()
    {
        var (host, port) = RequireRedis();
        await using var proxy = new TcpProxy(host, port);
        using var stalled = RedisConnection.Connect($"127.0.0.1:{proxy.Port},syncTimeout={SyncTimeoutMs}", NullLogger.Instance);
        using var direct = RedisConnection.Connect($"{host}:{port}", NullLogger.Instance);
        Assert.True(stalled.IsConnected);
        var names = new RedisNamespace($"arrakis-test-{Guid.NewGuid():N}:");
        var received = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);

        proxy.Freeze();
        var subscribe = Task.Run(() => new RedisInvalidationBus(stalled, names).Subscribe("c", m => received.TrySetResult(m)), Ct);
        var returned = await Task.WhenAny(subscribe, Task.Delay(Patience, Ct)) == subscribe;
        proxy.Thaw();
        Assert.True(returned, $"Subscribe was still waiting for Redis after {Patience.TotalSeconds:0} s");
        await subscribe;

        // Once Redis answers, the subscription sent without waiting is in place: a message published elsewhere arrives.
        var bus = new RedisInvalidationBus(direct, names);
        var sw = Stopwatch.StartNew();
        while (!received.Task.IsCompleted && sw.Elapsed < Patience)
        {
            await bus.PublishAsync("c", "nft:stall");
            await Task.WhenAny(received.Task, Task.Delay(200, Ct));
        }

        Assert.Equal("nft:stall", await received.Task.WaitAsync(TimeSpan.FromSeconds(1), Ct));
    }

    [Fact]
    public async Task A_fresh_replica_answers_its_first_reputation_query_while_redis_does_not_answer()
    {
        var (host, port) = RequireRedis();
        TestStorage.RequirePostgres();
        await using var p = await Platform.StartAsync("postgres");
        await using var proxy = new TcpProxy(host, port);
        var (replica, url) = await DixieReplica.StartAsync(p, $"127.0.0.1:{proxy.Port},syncTimeout={SyncTimeoutMs}", Ct);
        await using var _ = replica;

        // The anonymous query needs no Redis (no token to check for replay): Redis not answering must not hold it.
        proxy.Freeze();
        using var client = new HttpClient { BaseAddress = new Uri(url + "/"), Timeout = Patience };
        HttpResponseMessage response;
        try
        {
            response = await client.GetAsync("api/reputation/query?routingKey=nft:stall", Ct);
        }
        catch (TaskCanceledException) when (!Ct.IsCancellationRequested)
        {
            proxy.Thaw(); // lets the stuck request end so the replica can stop
            Assert.Fail($"the first query was still waiting for Redis after {Patience.TotalSeconds:0} s");
            return;
        }

        using (response)
        {
            var text = await response.Content.ReadAsStringAsync(Ct);
            Assert.True(response.StatusCode == HttpStatusCode.OK, $"{(int)response.StatusCode} {text}");
            Assert.Equal("nft:stall", JsonNode.Parse(text)!["routing_key"]!.GetValue<string>());
        }

        proxy.Thaw();
        await replica.StopAsync(Ct);
    }

    static (string Host, int Port) RequireRedis()
    {
        if (TestStorage.Redis is null)
        {
            Assert.Skip("Redis not configured (set ARRAKIS_TEST_REDIS)");
        }

        return StackExchange.Redis.ConfigurationOptions.Parse(TestStorage.Redis).EndPoints.Single() switch
        {
            DnsEndPoint dns => (dns.Host, dns.Port),
            IPEndPoint ip => (ip.Address.ToString(), ip.Port),
            var other => throw new InvalidOperationException($"unexpected endpoint {other}"),
        };
    }
}
