using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Quality;
using Arrakis.Shared.Storage;
using Arrakis.Shared.Tokens;
using Dapper;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Freeside.Tests.Quality;

public sealed class QualityApiTests
{
    static string UserToken(Platform p, string tenant = "test-tenant") =>
        p.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", "arrakis", new Dictionary<string, object> { ["sub"] = "user-1", ["tenant_id"] = tenant });

    static async Task<HttpResponseMessage> PostQualityAsync(Platform p, object body, bool auth = true, string tenant = "test-tenant")
    {
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl + "/") };
        using var request = new HttpRequestMessage(HttpMethod.Post, "api/agents/quality") { Content = JsonContent.Create(body) };
        if (auth)
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", UserToken(p, tenant));
        }

        return await http.SendAsync(request, TestContext.Current.CancellationToken);
    }

    static async Task<JsonObject> QueryAsync(Platform p, string key)
    {
        using var http = new HttpClient { BaseAddress = new Uri(p.DixieUrl + "/") };
        return (await http.GetFromJsonAsync<JsonObject>("api/reputation/query?routingKey=" + Uri.EscapeDataString(key), TestContext.Current.CancellationToken))!;
    }

    static async Task<string> ExpectQueuedAsync(HttpResponseMessage response)
    {
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var body = (await response.Content.ReadFromJsonAsync<JsonObject>(TestContext.Current.CancellationToken))!;
        Assert.Equal("queued", body["status"]!.GetValue<string>());
        var id = body["event_id"]!.GetValue<string>();
        Assert.StartsWith("qe_", id);
        return id;
    }

    /// <summary>The launch gate's P1-7 sequence, measured against 1 s instead of the gate's 10 s.</summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Quality_events_are_accepted_and_move_the_score_within_one_second(string engine)
    {
        await using var p = await Platform.StartAsync(engine);
        var baseline = await QueryAsync(p, "nft:test");
        Assert.Null(baseline["score"]);

        // Warm up the path once (dixie fetches freeside's JWKS on the first token).
        using (var warm = await PostQualityAsync(p, new { routingKey = "nft:warm", quality = "fair", source = "smoke-test" }))
        {
            await ExpectQueuedAsync(warm);
        }

        await WaitForSamplesAsync(p, "nft:warm", 1);
        var sw = Stopwatch.StartNew();
        foreach (var q in new[] { "good", "excellent", "good" })
        {
            using var r = await PostQualityAsync(p, new { routingKey = "nft:test", quality = q, source = "smoke-test" });
            await ExpectQueuedAsync(r);
        }

        JsonObject after;
        do
        {
            await Task.Delay(20, TestContext.Current.CancellationToken);
            after = await QueryAsync(p, "nft:test");
        }
        while (after["sample_count"]!.GetValue<long>() < 3 && sw.Elapsed < TimeSpan.FromSeconds(5));

        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(1), $"all three events visible after {sw.ElapsedMilliseconds} ms");
        Assert.Equal(0.7, after["score"]!.GetValue<double>(), 5);
    }

    /// <summary>
    /// A rating sent again with its idempotency key (a client retrying after a timeout) is queued and scored once, and
    /// answered with the same event id; the key with a different rating is 409; without a key every post is a new
    /// event, as before. The header and the body spellings are the same key.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_rating_retried_with_its_idempotency_key_counts_once(string engine)
    {
        await using var p = await Platform.StartAsync(engine);
        await Arrakis.Freeside.Seeding.Seeder.For(p.Freeside.Services.GetRequiredService<Database>()).SeedAsync(TestContext.Current.CancellationToken);
        var ct = TestContext.Current.CancellationToken;

        async Task<HttpResponseMessage> PostKeyedAsync(object body, string? header)
        {
            using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl + "/") };
            using var request = new HttpRequestMessage(HttpMethod.Post, "api/agents/quality") { Content = JsonContent.Create(body) };
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", UserToken(p));
            if (header is not null)
            {
                request.Headers.Add("X-Idempotency-Key", header);
            }

            return await http.SendAsync(request, ct);
        }

        using var first = await PostKeyedAsync(new { routingKey = "nft:idem", quality = 0.9, source = "judge" }, "rate-1");
        var id = await ExpectQueuedAsync(first);
        Assert.False(first.Headers.Contains("Idempotency-Replayed"));
        using var again = await PostKeyedAsync(new { routingKey = "nft:idem", quality = 0.9, source = "judge", idempotency_key = "rate-1" }, null);
        Assert.Equal(id, await ExpectQueuedAsync(again));
        Assert.Equal("true", again.Headers.GetValues("Idempotency-Replayed").Single());

        using var other = await PostKeyedAsync(new { routingKey = "nft:idem", quality = 0.1, source = "judge" }, "rate-1");
        Assert.Equal(HttpStatusCode.Conflict, other.StatusCode);
        Assert.Equal("IDEMPOTENCY_KEY_REUSED", (await other.Content.ReadFromJsonAsync<JsonObject>(ct))!["error"]!.GetValue<string>());

        using (var unkeyed1 = await PostKeyedAsync(new { routingKey = "nft:idem-free", quality = "good", source = "judge" }, null))
        using (var unkeyed2 = await PostKeyedAsync(new { routingKey = "nft:idem-free", quality = "good", source = "judge" }, null))
        {
            Assert.NotEqual(await ExpectQueuedAsync(unkeyed1), await ExpectQueuedAsync(unkeyed2));
        }

        await WaitForSamplesAsync(p, "nft:idem-free", 2);
        var scored = await WaitForSamplesAsync(p, "nft:idem", 1);
        await using (var c = await p.Freeside.Services.GetRequiredService<Database>().OpenAsync(ct))
        {
            Assert.Equal(1, await c.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM quality_outbox WHERE routing_key = 'nft:idem'"));
        }

        Assert.Equal(1, scored["sample_count"]!.GetValue<long>());
    }

    /// <summary>
    /// An agent keyed by a contract address is one agent in any case (wallets show addresses checksummed): a rating in
    /// lowercase finds the model that served an invoke keyed in mixed case, and both go out in the one spelling.
    /// </summary>
    [Fact]
    public async Task An_address_keyed_agent_is_one_agent_in_any_case()
    {
        await using var p = await Platform.StartAsync();
        await Arrakis.Freeside.Seeding.Seeder.For(p.Freeside.Services.GetRequiredService<Database>()).SeedAsync(TestContext.Current.CancellationToken);
        const string mixed = "nft:0xAbCdEf0000000000000000000000000000000001:7";
        var invokeToken = p.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", "arrakis", new Dictionary<string, object>
        {
            ["sub"] = "user-1", ["tenant_id"] = "test-tenant", ["access_level"] = "free", ["allowed_pools"] = new[] { "cheap" },
        });
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl + "/") };
        using var invoke = new HttpRequestMessage(HttpMethod.Post, "api/agents/invoke")
        {
            Content = new StringContent($$"""{"prompt":"Say hi","model":"cheap","agent":"{{mixed}}"}""", Encoding.UTF8, "application/json"),
        };
        invoke.Headers.Authorization = new AuthenticationHeaderValue("Bearer", invokeToken);
        using var served = await http.SendAsync(invoke, TestContext.Current.CancellationToken);
        var answer = (await served.Content.ReadFromJsonAsync<JsonObject>(TestContext.Current.CancellationToken))!;
        Assert.True(served.StatusCode == HttpStatusCode.OK, answer.ToJsonString());

        using var rated = await PostQualityAsync(p, new { routingKey = mixed.ToLowerInvariant(), quality = "good", source = "t" });
        var body = (await rated.Content.ReadFromJsonAsync<JsonObject>(TestContext.Current.CancellationToken))!;
        Assert.Equal(HttpStatusCode.Accepted, rated.StatusCode);
        Assert.Equal((mixed.ToLowerInvariant(), answer["model"]!.GetValue<string>()), (body["routing_key"]!.GetValue<string>(), body["model"]?.GetValue<string>()));
    }

    [Fact]
    public async Task Model_and_pool_come_from_the_trace_or_else_the_latest_invocation()
    {
        var lookup = new TableLookup();
        lookup.ByTrace["tr-1"] = new InvocationModel("cheap", "local-mini-b");
        lookup.Latest["nft:m"] = new InvocationModel("cheap", "local-mini-a");
        await using var p = await Platform.StartAsync(configure: (service, b) =>
        {
            if (service == "freeside")
            {
                b.Services.AddSingleton<IInvocationLookup>(lookup);
            }
        });
        await Arrakis.Freeside.Seeding.Seeder.For(p.Freeside.Services.GetRequiredService<Database>()).SeedAsync(TestContext.Current.CancellationToken); // test-tenant's community

        using (var r = await PostQualityAsync(p, new { routingKey = "nft:m", quality = "bad", source = "t", trace_id = "tr-1" }))
        {
            var body = (await r.Content.ReadFromJsonAsync<JsonObject>(TestContext.Current.CancellationToken))!;
            Assert.Equal(HttpStatusCode.Accepted, r.StatusCode);
            Assert.Equal("local-mini-b", body["model"]!.GetValue<string>());
        }

        using (var r = await PostQualityAsync(p, new { routingKey = "nft:m", quality = 1.0, source = "t" }))
        {
            await ExpectQueuedAsync(r);
        }

        var q = await WaitForSamplesAsync(p, "nft:m", 2);
        Assert.Equal(0.0 + 1, q["models"]!["local-mini-b"]!["sample_count"]!.GetValue<double>());
        Assert.Equal(1.0 / 3, q["models"]!["local-mini-b"]!["score"]!.GetValue<double>(), 5);
        Assert.Equal(2.0 / 3, q["models"]!["local-mini-a"]!["score"]!.GetValue<double>(), 5);
        Assert.Equal(["tr-1"], lookup.TracesAsked);
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task The_model_is_looked_up_among_the_callers_own_community_only(string engine)
    {
        await using var p = await Platform.StartAsync(engine);
        var ct = TestContext.Current.CancellationToken;
        await Arrakis.Freeside.Seeding.Seeder.For(p.Freeside.Services.GetRequiredService<Database>()).SeedAsync(ct); // test-tenant's community
        var communities = p.Freeside.Services.GetRequiredService<Arrakis.Freeside.Communities.CommunityStore>();
        await communities.UpsertAsync("other-community", "Other", Arrakis.Shared.Contracts.Tier.Free, 10_000, ct);
        await communities.SetAliasAsync("other-tenant", "other-community", ct);

        // test-tenant's community invokes the agent; its trace id and model are its own business.
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl + "/") };
        using var invoke = new HttpRequestMessage(HttpMethod.Post, "api/agents/invoke")
        {
            Content = JsonContent.Create(new { prompt = "Say hi", model = "cheap", agent = "nft:shared" }),
        };
        invoke.Headers.Authorization = new AuthenticationHeaderValue("Bearer", UserToken(p));
        using var invoked = await http.SendAsync(invoke, ct);
        Assert.Equal(HttpStatusCode.OK, invoked.StatusCode);
        var answer = (await invoked.Content.ReadFromJsonAsync<JsonObject>(ct))!;
        var trace = answer["trace_id"]!.GetValue<string>();
        var model = answer["model"]!.GetValue<string>();

        foreach (var body in new object[] { new { routingKey = "nft:shared", quality = "bad", source = "t", trace_id = trace }, new { routingKey = "nft:shared", quality = "bad", source = "t" } })
        {
            using var stranger = await PostQualityAsync(p, body, tenant: "other-tenant"); // another community
            Assert.Equal(HttpStatusCode.Accepted, stranger.StatusCode);
            var seen = (await stranger.Content.ReadFromJsonAsync<JsonObject>(ct))!;
            Assert.Null(seen["model"]);
            Assert.Null(seen["pool"]);
        }

        using var own = await PostQualityAsync(p, new { routingKey = "nft:shared", quality = "good", source = "t", trace_id = trace });
        Assert.Equal(HttpStatusCode.Accepted, own.StatusCode);
        Assert.Equal(model, (await own.Content.ReadFromJsonAsync<JsonObject>(ct))!["model"]!.GetValue<string>());
    }

    [Fact]
    public async Task Quality_events_have_their_own_rate_limit()
    {
        await using var p = await Platform.StartAsync(settings: new Dictionary<string, string?> { ["RateLimits:Free:UserPerMinute"] = "3" });
        var ct = TestContext.Current.CancellationToken;
        await Arrakis.Freeside.Seeding.Seeder.For(p.Freeside.Services.GetRequiredService<Database>()).SeedAsync(ct);
        var statuses = new List<HttpStatusCode>();
        HttpResponseMessage? last = null;
        for (var i = 0; i < 4; i++)
        {
            last?.Dispose();
            last = await PostQualityAsync(p, new { routingKey = "nft:rl", quality = "good", source = "t" });
            statuses.Add(last.StatusCode);
        }

        // The minute may roll over between the posts; then the count starts again and no 429 comes.
        if (statuses[^1] == HttpStatusCode.Accepted)
        {
            last!.Dispose();
            last = await PostQualityAsync(p, new { routingKey = "nft:rl", quality = "good", source = "t" });
            statuses.Add(last.StatusCode);
        }

        Assert.Equal(HttpStatusCode.TooManyRequests, statuses[^1]);
        Assert.Equal("RATE_LIMITED", (await last!.Content.ReadFromJsonAsync<JsonObject>(ct))!["error"]!.GetValue<string>());
        Assert.True(last.Headers.Contains("Retry-After"));
        last.Dispose();

        // Ratings do not use up the invoke route's allowance.
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl + "/") };
        using var invoke = new HttpRequestMessage(HttpMethod.Post, "api/agents/invoke") { Content = JsonContent.Create(new { prompt = "Say hi", model = "cheap" }) };
        invoke.Headers.Authorization = new AuthenticationHeaderValue("Bearer", UserToken(p));
        using var invoked = await http.SendAsync(invoke, ct);
        Assert.Equal(HttpStatusCode.OK, invoked.StatusCode);
    }

    [Fact]
    public async Task Bad_requests_name_the_field_and_a_user_token_is_required()
    {
        await using var p = await Platform.StartAsync();
        using (var r = await PostQualityAsync(p, new { routingKey = "nft:test", quality = "good", source = "t" }, auth: false))
        {
            Assert.Equal(HttpStatusCode.Unauthorized, r.StatusCode);
        }

        var cases = new (string Field, object Body)[]
        {
            ("routingKey", new { quality = "good", source = "t" }),
            ("routingKey", new { routingKey = "wallet:1", quality = "good", source = "t" }),
            ("routingKey", new { routingKey = 5, quality = "good", source = "t" }),
            ("quality", new { routingKey = "nft:test", source = "t" }),
            ("quality", new { routingKey = "nft:test", quality = "great", source = "t" }),
            ("quality", new { routingKey = "nft:test", quality = 2, source = "t" }),
            ("source", new { routingKey = "nft:test", quality = "good" }),
            ("extra", new { routingKey = "nft:test", quality = "good", source = "t", extra = 1 }),
        };
        foreach (var (field, body) in cases)
        {
            using var r = await PostQualityAsync(p, body);
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            var problem = (await r.Content.ReadFromJsonAsync<JsonObject>(TestContext.Current.CancellationToken))!;
            Assert.Equal(field, problem["field"]!.GetValue<string>());
        }
    }

    /// <summary>
    /// A key with a trailing newline (which <c>$</c> let through), text that cannot be stored, a repeated name, and a
    /// field given under both of its spellings with different values, a blank source or trace id (which dixie refuses):
    /// 400 naming the field, and nothing reaches the outbox.
    /// </summary>
    [Fact]
    public async Task Bad_keys_invalid_text_and_repeated_names_are_400_and_nothing_is_queued()
    {
        await using var p = await Platform.StartAsync();
        var ct = TestContext.Current.CancellationToken;
        var cases = new (string Field, byte[] Body)[]
        {
            ("routingKey", Encoding.UTF8.GetBytes("""{"routingKey":"nft:1\n","quality":"good","source":"t"}""")),
            ("routingKey", Encoding.UTF8.GetBytes("""{"routingKey":"nft:0xabc:7\n","quality":"good","source":"t"}""")),
            ("routing_key", Encoding.UTF8.GetBytes("""{"routing_key":"nft:\ud800","quality":"good","source":"t"}""")),
            ("source", Encoding.UTF8.GetBytes("""{"routingKey":"nft:1","quality":"good","source":"judge \udc00"}""")),
            ("trace_id", [.. "{\"routingKey\":\"nft:1\",\"quality\":\"good\",\"source\":\"t\",\"trace_id\":\"tr-"u8, 0xff, .. "\"}"u8]),
            ("body", [.. "{\"routingKey\":\"nft:1\",\"quality\":\"good\",\"source\":\"t\",\"x"u8, 0xc3, .. "\":1}"u8]),
            ("quality", Encoding.UTF8.GetBytes("""{"routingKey":"nft:1","quality":"good","quality":"bad","source":"t"}""")),
            ("routingKey", Encoding.UTF8.GetBytes("""{"routingKey":"nft:1","routing_key":"nft:2","quality":"good","source":"t"}""")),
            ("trace_id", Encoding.UTF8.GetBytes("""{"routingKey":"nft:1","quality":"good","source":"t","trace_id":"tr-1","traceId":"tr-2"}""")),
            // Blank text, which dixie refuses: queued, the event could only die in the outbox.
            ("source", Encoding.UTF8.GetBytes("""{"routingKey":"nft:1","quality":"good","source":"   "}""")),
            ("trace_id", Encoding.UTF8.GetBytes("""{"routingKey":"nft:1","quality":"good","source":"t","traceId":" "}""")),
        };
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl + "/") };
        var wrong = new List<string>();
        foreach (var (field, body) in cases)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "api/agents/quality")
            {
                Content = new ByteArrayContent(body) { Headers = { ContentType = new MediaTypeHeaderValue("application/json") } },
            };
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", UserToken(p));
            using var r = await http.SendAsync(request, ct);
            if (ProblemBodies.Mismatch(r.StatusCode, await r.Content.ReadAsStringAsync(ct), field) is { } miss)
            {
                wrong.Add(miss);
            }
        }

        Assert.True(wrong.Count == 0, string.Join("; ", wrong));

        var db = p.Freeside.Services.GetRequiredService<Database>();
        await using var connection = await db.OpenAsync(ct);
        Assert.Equal(0, await connection.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM quality_outbox"));
    }

    /// <summary>dixie unreachable: events wait in the outbox, then arrive exactly once; a redelivery is harmless.</summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_dixie_outage_queues_events_which_then_arrive_exactly_once(string engine)
    {
        var closed = $"http://127.0.0.1:{TestStorage.FreePort()}";
        await using var p = await Platform.StartAsync(engine, new Dictionary<string, string?>
        {
            ["Quality:BaseBackoffMilliseconds"] = "50",
            ["Quality:MaxBackoffMilliseconds"] = "400",
        });
        var ct = TestContext.Current.CancellationToken;
        var freesideConfig = p.Freeside.Services.GetRequiredService<IConfiguration>();
        freesideConfig["Services:DixieUrl"] = closed;

        var ids = new List<string>();
        foreach (var q in new object[] { "good", "excellent", "bad", 0.6, "fair" })
        {
            using var r = await PostQualityAsync(p, new { routingKey = "nft:outage", quality = q, source = "t" });
            ids.Add(await ExpectQueuedAsync(r));
        }

        await Task.Delay(1500, ct);
        Assert.Null((await QueryAsync(p, "nft:outage"))["score"]);
        var db = p.Freeside.Services.GetRequiredService<Database>();
        await using (var connection = await db.OpenAsync(ct))
        {
            var rows = (await connection.QueryAsync<(string status, long attempts)>("SELECT status, attempts FROM quality_outbox")).ToList();
            Assert.Equal(5, rows.Count);
            Assert.All(rows, r => Assert.Equal("pending", r.status));
            Assert.All(rows, r => Assert.True(r.attempts >= 2, $"retried with backoff: {r.attempts} attempts"));
        }

        freesideConfig["Services:DixieUrl"] = p.DixieUrl; // dixie is back
        var q1 = await WaitForSamplesAsync(p, "nft:outage", 5);
        Assert.Equal(5, q1["sample_count"]!.GetValue<long>());
        // Beta(1 + 0.75 + 1 + 0 + 0.6 + 0.5, 1 + 0.25 + 0 + 1 + 0.4 + 0.5) = Beta(3.85, 3.15).
        Assert.Equal(3.85 / 7, q1["score"]!.GetValue<double>(), 5);

        // A crash between dixie's 2xx and marking the row delivered means a resend: it must not count twice.
        await using (var connection = await db.OpenAsync(ct))
        {
            // dixie may count the last event a moment before the deliverer marks its row delivered.
            var delivered = 0L;
            for (var waited = Stopwatch.StartNew(); waited.Elapsed < TimeSpan.FromSeconds(10); await Task.Delay(50, ct))
            {
                delivered = await connection.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM quality_outbox WHERE status = 'delivered'");
                if (delivered == 5)
                {
                    break;
                }
            }

            Assert.Equal(5, delivered);
            await connection.ExecuteAsync("UPDATE quality_outbox SET status = 'pending', delivered_at = NULL");
        }

        var deadline = Stopwatch.StartNew();
        long pending;
        do
        {
            await Task.Delay(50, ct);
            await using var connection = await db.OpenAsync(ct);
            pending = await connection.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM quality_outbox WHERE status = 'pending'");
        }
        while (pending > 0 && deadline.Elapsed < TimeSpan.FromSeconds(10));

        Assert.Equal(0, pending);
        var q2 = await QueryAsync(p, "nft:outage");
        Assert.Equal(5, q2["sample_count"]!.GetValue<long>());
        Assert.Equal(3.85 / 7, q2["score"]!.GetValue<double>(), 5);
    }

    /// <summary>
    /// A keyed rating sent again after the outbox pruned its first event is queued as new, and dixie answers 409 for the
    /// key's event id (its timestamp differs). The key's first rating stands and the row is done: it was marked dead,
    /// which turned the outbox's health degraded for an outbox and a dixie that were both fine.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_key_used_again_after_its_event_was_pruned_keeps_the_first_rating_and_is_not_dead(string engine)
    {
        await using var p = await Platform.StartAsync(engine);
        var ct = TestContext.Current.CancellationToken;
        var db = p.Freeside.Services.GetRequiredService<Database>();
        async Task<string> StatusAsync(string id)
        {
            await using var connection = await db.OpenAsync(ct);
            for (var waited = Stopwatch.StartNew(); waited.Elapsed < TimeSpan.FromSeconds(10); await Task.Delay(25, ct))
            {
                var status = await connection.ExecuteScalarAsync<string?>("SELECT status FROM quality_outbox WHERE event_id = @id", new { id });
                if (status is "delivered" or "dead")
                {
                    return status;
                }
            }

            return "pending";
        }

        var body = new { routingKey = "nft:late-key", quality = "good", source = "t", idempotency_key = "rating-late-1" };
        using var first = await PostQualityAsync(p, body);
        var id = await ExpectQueuedAsync(first);
        Assert.Equal("delivered", await StatusAsync(id));
        await using (var connection = await db.OpenAsync(ct))
        {
            await connection.ExecuteAsync("DELETE FROM quality_outbox WHERE event_id = @id", new { id }); // as the retention prune does
        }

        await Task.Delay(5, ct); // another millisecond: the new event's timestamp differs from the first's
        using var again = await PostQualityAsync(p, body with { quality = "bad" });
        Assert.Equal(id, await ExpectQueuedAsync(again));
        Assert.Equal("delivered", await StatusAsync(id));
        var q = await QueryAsync(p, "nft:late-key");
        Assert.Equal(1L, q["sample_count"]!.GetValue<long>());
        Assert.Equal(1.75 / 3, q["score"]!.GetValue<double>(), 5); // the first rating (good) on the Beta(1,1) prior, not the second
        var health = await new HttpClient().GetFromJsonAsync<JsonObject>(p.FreesideUrl + "/health", ct);
        Assert.Equal("healthy", health!["checks"]!["quality_outbox"]!["status"]!.GetValue<string>());
    }

    /// <summary>
    /// The outbox keeps the backlog and a retention window of history: the deliverer deletes what was delivered longer
    /// ago than <c>Quality:DeliveredRetentionHours</c>, never an event still waiting or dead, and the health check counts
    /// only what is not delivered.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Delivered_events_past_the_retention_are_deleted_and_the_rest_is_kept(string engine)
    {
        await using var p = await Platform.StartAsync(engine, new Dictionary<string, string?> { ["Quality:DeliveredRetentionHours"] = "24" });
        var ct = TestContext.Current.CancellationToken;
        var ids = new List<string>();
        for (var i = 0; i < 3; i++)
        {
            using var r = await PostQualityAsync(p, new { routingKey = "nft:retention", quality = "good", source = "t" });
            ids.Add(await ExpectQueuedAsync(r));
        }

        var db = p.Freeside.Services.GetRequiredService<Database>();
        await using var connection = await db.OpenAsync(ct);
        Task<long> CountAsync(string where) => connection.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM quality_outbox WHERE " + where);
        for (var waited = Stopwatch.StartNew(); await CountAsync("status = 'delivered'") < 3 && waited.Elapsed < TimeSpan.FromSeconds(10);)
        {
            await Task.Delay(25, ct);
        }

        Assert.Equal(3, await CountAsync("status = 'delivered' AND next_attempt_at = delivered_at"));
        var now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        const long Hour = 3_600_000;
        // Two delivered 25 h ago, one 23 h ago; a pending event and a dead one, both 30 days old.
        await connection.ExecuteAsync("UPDATE quality_outbox SET delivered_at = @at, next_attempt_at = @at WHERE event_id IN (@a, @b)", new { at = now - (25 * Hour), a = ids[0], b = ids[1] });
        await connection.ExecuteAsync("UPDATE quality_outbox SET delivered_at = @at, next_attempt_at = @at WHERE event_id = @c", new { at = now - (23 * Hour), c = ids[2] });
        foreach (var (id, status, next) in new[] { ("qe_old_pending", "pending", now + Hour), ("qe_old_dead", "dead", now - (720 * Hour)) })
        {
            await connection.ExecuteAsync(
                "INSERT INTO quality_outbox (event_id, routing_key, payload, status, attempts, created_at, next_attempt_at) VALUES (@id, 'nft:retention', '{}', @status, 9, @created, @next)",
                new { id, status, created = now - (720 * Hour), next });
        }

        var deliverer = p.Freeside.Services.GetServices<Microsoft.Extensions.Hosting.IHostedService>().OfType<QualityDeliverer>().Single();
        Assert.Equal(2, await deliverer.PruneDeliveredAsync(ct));
        var left = (await connection.QueryAsync<string>("SELECT event_id FROM quality_outbox ORDER BY event_id")).ToList();
        Assert.Equal(new[] { ids[2], "qe_old_dead", "qe_old_pending" }.Order(StringComparer.Ordinal), left.Order(StringComparer.Ordinal));
        Assert.Equal(0, await deliverer.PruneDeliveredAsync(ct)); // nothing more is old enough

        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl + "/") };
        var health = (await http.GetFromJsonAsync<JsonObject>("health", ct))!["checks"]!["quality_outbox"]!;
        Assert.Equal("degraded", health["status"]!.GetValue<string>()); // the 30-day-old pending event is a backlog
        Assert.Equal(1, health["data"]!["pending"]!.GetValue<long>());
        Assert.Equal(1, health["data"]!["dead"]!.GetValue<long>());
        Assert.True(health["data"]!["oldest_pending_age_ms"]!.GetValue<long>() >= 720 * Hour);
    }

    [Fact]
    public async Task A_retention_of_zero_keeps_every_delivered_event()
    {
        await using var p = await Platform.StartAsync("sqlite", new Dictionary<string, string?> { ["Quality:DeliveredRetentionHours"] = "0" });
        var ct = TestContext.Current.CancellationToken;
        using (var r = await PostQualityAsync(p, new { routingKey = "nft:keep", quality = "good", source = "t" }))
        {
            await ExpectQueuedAsync(r);
        }

        var db = p.Freeside.Services.GetRequiredService<Database>();
        await using var connection = await db.OpenAsync(ct);
        for (var waited = Stopwatch.StartNew(); await connection.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM quality_outbox WHERE status = 'delivered'") == 0 && waited.Elapsed < TimeSpan.FromSeconds(10);)
        {
            await Task.Delay(25, ct);
        }

        await connection.ExecuteAsync("UPDATE quality_outbox SET delivered_at = 1, next_attempt_at = 1");
        var deliverer = p.Freeside.Services.GetServices<Microsoft.Extensions.Hosting.IHostedService>().OfType<QualityDeliverer>().Single();
        Assert.Equal(0, await deliverer.PruneDeliveredAsync(ct));
        Assert.Equal(1, await connection.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM quality_outbox WHERE status = 'delivered'"));
    }

    static async Task<JsonObject> WaitForSamplesAsync(Platform p, string key, long samples)
    {
        var sw = Stopwatch.StartNew();
        JsonObject q;
        do
        {
            await Task.Delay(25, TestContext.Current.CancellationToken);
            q = await QueryAsync(p, key);
        }
        while (q["sample_count"]!.GetValue<long>() < samples && sw.Elapsed < TimeSpan.FromSeconds(10));

        return q;
    }

    sealed class TableLookup : IInvocationLookup
    {
        public ConcurrentDictionary<string, InvocationModel> ByTrace { get; } = new();

        public ConcurrentDictionary<string, InvocationModel> Latest { get; } = new();

        public ConcurrentQueue<string> TracesAsked { get; } = new();

        public Task<InvocationModel?> FindByTraceAsync(string communityId, string traceId, CancellationToken ct)
        {
            TracesAsked.Enqueue(traceId);
            return Task.FromResult(ByTrace.TryGetValue(traceId, out var m) ? m : null);
        }

        public Task<InvocationModel?> LatestForAgentAsync(string communityId, string routingKey, CancellationToken ct) =>
            Task.FromResult(Latest.TryGetValue(routingKey, out var m) ? m : null);
    }
}
