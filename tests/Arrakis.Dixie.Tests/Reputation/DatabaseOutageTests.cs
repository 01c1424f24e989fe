using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;
using Arrakis.Shared.Storage;
using Npgsql;

namespace Arrakis.Dixie.Tests.Reputation;

/// <summary>dixie on PostgreSQL behind a proxy that black-holes the database, as a failover or a network partition does.</summary>
public sealed class DatabaseOutageTests
{
    // Past the 2 s request-path timeout with room for a busy machine, far short of what the routes took without it
    // (Npgsql's 30 s command timeout, then its cancel request).
    static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>
    /// A database that stops answering without closing its connections makes an event post, a query and a models read
    /// answer 503 SERVICE_UNAVAILABLE (database) within the request-path timeout (Database:RequestTimeout); they hung for
    /// Npgsql's 30 s command timeout and its cancel request. Once the database answers again, the event's retry is
    /// recorded once.
    /// </summary>
    [Fact]
    public async Task Reputation_routes_answer_503_within_seconds_when_the_database_stops_answering()
    {
        var pg = new NpgsqlConnectionStringBuilder(TestStorage.RequirePostgres());
        await using var proxy = new TcpProxy(pg.Host!, pg.Port);
        pg.Host = "127.0.0.1";
        pg.Port = proxy.Port;
        pg.SearchPath = TestStorage.TrackSchema("t_dixie_outage_" + Guid.NewGuid().ToString("N")[..12]);
        pg.Remove("Timeout"); // Npgsql's defaults, as production runs
        await using var p = await Platform.StartAsync("postgres", new Dictionary<string, string?>
        {
            ["ConnectionStrings:Dixie"] = pg.ConnectionString,
            [StorageOptions.RequestTimeoutSetting] = "00:00:02",
        });
        using var dixie = new HttpClient { BaseAddress = new Uri(p.DixieUrl + "/"), Timeout = TimeSpan.FromSeconds(15) };
        await DixieReplica.PostEventAsync(p, dixie, "outage-warm", "nft:outage-warm", Ct); // connections to the proxy are pooled

        proxy.Freeze();
        await AssertUnavailableAsync(() => DixieReplica.SendEventAsync(p, dixie, "outage-1", "nft:outage", Ct), "POST events");
        await AssertUnavailableAsync(() => dixie.GetAsync("api/reputation/query?routingKey=nft:outage", Ct), "GET query");
        using (var models = new HttpRequestMessage(HttpMethod.Get, "api/reputation/models?routingKey=nft:outage"))
        {
            models.Headers.Authorization = DixieReplica.ServiceAuthorization(p);
            await AssertUnavailableAsync(() => dixie.SendAsync(models, Ct), "GET models");
        }

        proxy.Thaw();
        var healthy = Stopwatch.StartNew();
        while (true)
        {
            using var health = await dixie.GetAsync("api/health", Ct);
            if (health.StatusCode == HttpStatusCode.OK)
            {
                break;
            }

            Assert.True(healthy.Elapsed < TimeSpan.FromSeconds(30), "dixie did not become healthy again: " + await health.Content.ReadAsStringAsync(Ct));
            await Task.Delay(100, Ct);
        }

        // The post the 503 cut off may have committed once its bytes got through: the retry is recorded or replayed, once.
        using (var retry = await DixieReplica.SendEventAsync(p, dixie, "outage-1", "nft:outage", Ct))
        {
            Assert.Equal(HttpStatusCode.OK, retry.StatusCode);
        }

        var after = (await dixie.GetFromJsonAsync<JsonObject>("api/reputation/query?routingKey=nft:outage", Ct))!;
        Assert.Equal(1, after["sample_count"]!.GetValue<int>());
    }

    static async Task AssertUnavailableAsync(Func<Task<HttpResponseMessage>> send, string route)
    {
        var sw = Stopwatch.StartNew();
        using var response = await send();
        sw.Stop();
        var text = await response.Content.ReadAsStringAsync(Ct);
        Assert.True(response.StatusCode == HttpStatusCode.ServiceUnavailable, $"{route}: {(int)response.StatusCode} after {sw.Elapsed}: {text}");
        var error = JsonDocument.Parse(text).RootElement;
        Assert.Equal(("SERVICE_UNAVAILABLE", "database"), (error.GetProperty("error").GetString(), error.GetProperty("dependency").GetString()));
        Assert.True(sw.Elapsed < Bound, $"{route} took {sw.Elapsed}");
    }
}
