using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Dixie.Tests.Reputation;

public sealed class RedisOutageTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_replica_started_while_redis_is_down_answers_queries_and_gets_invalidations_once_redis_returns()
    {
        TestStorage.RequirePostgres();
        if (TestStorage.Redis is null)
        {
            Assert.Skip("Redis not configured (set ARRAKIS_TEST_REDIS)");
        }

        await using var p = await Platform.StartAsync("postgres");
        var redis = StackExchange.Redis.ConfigurationOptions.Parse(TestStorage.Redis).EndPoints.Single() switch
        {
            DnsEndPoint dns => (dns.Host, dns.Port),
            IPEndPoint ip => (ip.Address.ToString(), ip.Port),
            var other => throw new InvalidOperationException($"unexpected endpoint {other}"),
        };
        await using var proxy = new TcpProxy(redis.Item1, redis.Item2);
        proxy.Cut();
        var (replica, url2) = await DixieReplica.StartAsync(p, $"127.0.0.1:{proxy.Port}", Ct);
        await using var _ = replica;

        using var one = new HttpClient { BaseAddress = new Uri(p.DixieUrl + "/") };
        using var two = new HttpClient { BaseAddress = new Uri(url2 + "/") };
        const string query = Query;
        using (var down = await two.GetAsync(query, Ct))
        {
            var text = await down.Content.ReadAsStringAsync(Ct);
            Assert.True(down.StatusCode == HttpStatusCode.OK, $"{(int)down.StatusCode} {text}");
            Assert.Null(JsonNode.Parse(text)!["score"]);
        }

        // Redis returns: the subscription the replica could not send at start-up is sent, so a write on replica one
        // evicts replica two's cached "no data" at once, not after the cache's TTL.
        proxy.Restore();
        await SeesWritesAtOnceAsync(p, replica, one, two, "o-1");

        // Lost and back again while running: the subscription is re-established after the reconnect.
        proxy.Cut();
        var mux = replica.Services.GetRequiredService<StackExchange.Redis.IConnectionMultiplexer>();
        var lost = Stopwatch.StartNew();
        while (mux.IsConnected && lost.Elapsed < TimeSpan.FromSeconds(30))
        {
            await Task.Delay(100, Ct);
        }

        Assert.False(mux.IsConnected);
        using (var down = await two.GetAsync(query, Ct))
        {
            Assert.Equal(HttpStatusCode.OK, down.StatusCode);
        }

        proxy.Restore();
        await SeesWritesAtOnceAsync(p, replica, one, two, "o-2");
        await replica.StopAsync(Ct);
    }

    const string Query = "api/reputation/query?routingKey=nft:outage";

    static async Task SeesWritesAtOnceAsync(Platform p, WebApplication replica, HttpClient one, HttpClient two, string eventId)
    {
        var mux = replica.Services.GetRequiredService<StackExchange.Redis.IConnectionMultiplexer>();
        var channel = StackExchange.Redis.RedisChannel.Literal(p.RedisPrefix + "inval:" + Arrakis.Dixie.Reputation.ReputationCache.Channel);
        var sw = Stopwatch.StartNew();
        while (!(mux.IsConnected && mux.GetSubscriber().IsConnected(channel)) && sw.Elapsed < TimeSpan.FromSeconds(30))
        {
            await Task.Delay(100, Ct);
        }

        var before = (await two.GetFromJsonAsync<JsonObject>(Query, Ct))!; // cached on replica two for the TTL (5 s)
        await DixieReplica.PostEventAsync(p, one, eventId, "nft:outage", Ct);

        sw.Restart();
        JsonObject seen;
        do
        {
            await Task.Delay(20, Ct);
            seen = (await two.GetFromJsonAsync<JsonObject>(Query, Ct))!;
        }
        while (seen["sample_count"]?.ToJsonString() == before["sample_count"]?.ToJsonString() && sw.Elapsed < TimeSpan.FromSeconds(6));

        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(1), $"replica two saw write {eventId} after {sw.ElapsedMilliseconds} ms (cache TTL is 5 s)");
    }
}
