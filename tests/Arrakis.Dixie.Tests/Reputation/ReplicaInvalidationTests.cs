using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json.Nodes;

namespace Arrakis.Dixie.Tests.Reputation;

public sealed class ReplicaInvalidationTests
{
    /// <summary>Two dixie replicas on one PostgreSQL database and Redis: a write on one evicts the other's cache at once.</summary>
    [Fact]
    public async Task A_write_on_one_replica_is_visible_on_another_within_one_second()
    {
        TestStorage.RequirePostgres();
        if (TestStorage.Redis is null)
        {
            Assert.Skip("Redis not configured (set ARRAKIS_TEST_REDIS)");
        }

        var ct = TestContext.Current.CancellationToken;
        await using var p = await Platform.StartAsync("postgres");
        var (replica, url2) = await DixieReplica.StartAsync(p, TestStorage.Redis, ct);
        await using var _ = replica;

        using var one = new HttpClient { BaseAddress = new Uri(p.DixieUrl + "/") };
        using var two = new HttpClient { BaseAddress = new Uri(url2 + "/") };
        const string query = "api/reputation/query?routingKey=nft:replica";
        Assert.Null((await two.GetFromJsonAsync<JsonObject>(query, ct))!["score"]); // cached as "no data" on replica two

        await DixieReplica.PostEventAsync(p, one, "warm-up", "nft:warm", ct); // the first token makes dixie fetch freeside's JWKS
        var sw = Stopwatch.StartNew();
        await DixieReplica.PostEventAsync(p, one, "r-1", "nft:replica", ct);

        JsonObject seen;
        do
        {
            await Task.Delay(20, ct);
            seen = (await two.GetFromJsonAsync<JsonObject>(query, ct))!;
        }
        while (seen["score"] is null && sw.Elapsed < TimeSpan.FromSeconds(6));

        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(1), $"replica two saw the write after {sw.ElapsedMilliseconds} ms (cache TTL is 5 s)");
        Assert.Equal(2.0 / 3, seen["score"]!.GetValue<double>(), 5);
        await replica.StopAsync(ct);
    }
}
