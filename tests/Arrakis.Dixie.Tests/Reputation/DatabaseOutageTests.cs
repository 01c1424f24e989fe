using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;
using Arrakis.Dixie.Reputation;
using Arrakis.Shared.Storage;
using Microsoft.Extensions.DependencyInjection;
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
        var (pg, proxy) = TcpProxy.ToTestPostgres("t_dixie_outage_");
        await using var _ = proxy;
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

    /// <summary>
    /// An event post answered 503 at Database__RequestTimeout whose commit the database completes once it answers again
    /// (before the connection broke) is recorded: its agent's cached query answer is dropped at once and it counts in
    /// reputation_events_accepted once (its replayed retry does not). Before, both happened only in the call that had
    /// already answered 503: the query answered the old score until the cache's TTL, and the event was never counted.
    /// </summary>
    [Fact]
    public async Task An_event_that_commits_after_its_503_drops_the_cached_answer_and_counts_once()
    {
        var (pg, proxy) = TcpProxy.ToTestPostgres("t_dixie_late_");
        await using var _ = proxy;
        pg.Remove("Timeout"); // Npgsql's defaults, as production runs
        await using var p = await Platform.StartAsync("postgres", new Dictionary<string, string?>
        {
            ["ConnectionStrings:Dixie"] = pg.ConnectionString,
            [StorageOptions.RequestTimeoutSetting] = "00:00:02",
            ["Reputation:CacheSeconds"] = "9",
        });
        using var dixie = new HttpClient { BaseAddress = new Uri(p.DixieUrl + "/"), Timeout = TimeSpan.FromSeconds(15) };
        await DixieReplica.PostEventAsync(p, dixie, "late-warm", "nft:late", Ct);

        var meters = p.Dixie.Services.GetRequiredService<IMeterFactory>();
        var accepted = 0L;
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Name == ReputationMetrics.EventsAccepted && ReferenceEquals(instrument.Meter.Scope, meters))
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((_, value, _, _) => Interlocked.Add(ref accepted, value));
        listener.Start();

        // The event's COMMIT waits (a deferred trigger) on an advisory lock this test holds, past the proxy.
        var lockKey = Random.Shared.NextInt64(1, long.MaxValue);
        await using var db = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(TestStorage.RequirePostgres()) { SearchPath = pg.SearchPath }.ConnectionString);
        await db.OpenAsync(Ct);
        async Task<long> ScalarAsync(string sql)
        {
            await using var command = new NpgsqlCommand(sql, db);
            return Convert.ToInt64(await command.ExecuteScalarAsync(Ct), System.Globalization.CultureInfo.InvariantCulture);
        }

        await ScalarAsync($"""
            CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_advisory_xact_lock({lockKey}); RETURN NULL; END $$;
            CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON reputation_events DEFERRABLE INITIALLY DEFERRED
                FOR EACH ROW WHEN (NEW.event_id = 'late-1') EXECUTE FUNCTION hold_commit();
            SELECT pg_advisory_lock({lockKey});
            """);

        var cached = Stopwatch.StartNew();
        var before = (await dixie.GetFromJsonAsync<JsonObject>("api/reputation/query?routingKey=nft:late", Ct))!; // now cached for 9 s
        Assert.Equal(1, before["sample_count"]!.GetValue<int>());

        var post = DixieReplica.SendEventAsync(p, dixie, "late-1", "nft:late", Ct);
        var waiting = Stopwatch.StartNew();
        while (await ScalarAsync($"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = {lockKey & 0xFFFFFFFF}") == 0)
        {
            Assert.True(waiting.Elapsed < Bound, "the event's commit never reached the trigger");
            await Task.Delay(20, Ct);
        }

        proxy.Freeze(); // the database stops answering while the COMMIT is in flight
        await AssertUnavailableAsync(() => post, "POST events");
        Assert.Equal(0, Interlocked.Read(ref accepted));

        await ScalarAsync($"SELECT CAST(pg_advisory_unlock({lockKey}) AS int)"); // the COMMIT completes on the server
        waiting.Restart();
        while (await ScalarAsync("SELECT count(*) FROM reputation_events WHERE event_id = 'late-1'") == 0)
        {
            Assert.True(waiting.Elapsed < Bound, "the held event never committed");
            await Task.Delay(20, Ct);
        }

        proxy.Thaw(); // its answer reaches dixie before the connection broke
        waiting.Restart();
        while (Interlocked.Read(ref accepted) == 0 && waiting.Elapsed < TimeSpan.FromSeconds(3))
        {
            await Task.Delay(20, Ct);
        }

        Assert.True(cached.Elapsed < TimeSpan.FromSeconds(9), $"the cached answer expired on its own ({cached.Elapsed}): the check below proves nothing");
        var after = (await dixie.GetFromJsonAsync<JsonObject>("api/reputation/query?routingKey=nft:late", Ct))!;
        Assert.Equal(2, after["sample_count"]!.GetValue<int>()); // not the cached 1
        Assert.Equal(1, Interlocked.Read(ref accepted));

        using (var retry = await DixieReplica.SendEventAsync(p, dixie, "late-1", "nft:late", Ct))
        {
            Assert.Equal(HttpStatusCode.OK, retry.StatusCode);
            Assert.True(retry.Headers.Contains("Idempotency-Replayed"));
        }

        Assert.Equal(1, Interlocked.Read(ref accepted)); // the replay is not counted again
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
