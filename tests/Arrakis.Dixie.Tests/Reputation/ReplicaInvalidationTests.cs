using System.Diagnostics;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using Arrakis.Shared.Storage;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

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
        var storage = p.Dixie.Services.GetRequiredService<StorageOptions>();
        var url2 = $"http://127.0.0.1:{TestStorage.FreePort()}";
        var args = new Dictionary<string, string?>
        {
            ["urls"] = url2,
            ["LOA_DATA_DIR"] = p.DataDir,
            ["ConnectionStrings:Dixie"] = storage.ConnectionString,
            ["Redis:Configuration"] = TestStorage.Redis,
            ["Redis:KeyPrefix"] = p.RedisPrefix, // replicas of one deployment share its prefix
            ["Services:FreesideUrl"] = p.FreesideUrl,
            ["Services:FinnUrl"] = p.FinnUrl,
        }.SelectMany(kv => new[] { "--" + kv.Key, kv.Value! }).ToArray();
        await using var replica = await DixieService.CreateAsync(args);
        await replica.StartAsync(ct);

        using var one = new HttpClient { BaseAddress = new Uri(p.DixieUrl + "/") };
        using var two = new HttpClient { BaseAddress = new Uri(url2 + "/") };
        const string query = "api/reputation/query?routingKey=nft:replica";
        Assert.Null((await two.GetFromJsonAsync<JsonObject>(query, ct))!["score"]); // cached as "no data" on replica two

        async Task PostAsync(string id, string key)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "api/reputation/events")
            {
                Content = JsonContent.Create(new { event_id = id, routing_key = key, score = "excellent", source = "t", timestamp = 1_800_000_000_000 }),
            };
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer",
                p.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", "loa-dixie", new Dictionary<string, object> { ["sub"] = "t" }));
            using var response = await one.SendAsync(request, ct);
            response.EnsureSuccessStatusCode();
        }

        await PostAsync("warm-up", "nft:warm"); // the first token makes dixie fetch freeside's JWKS
        var sw = Stopwatch.StartNew();
        await PostAsync("r-1", "nft:replica");

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
