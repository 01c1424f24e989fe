using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Dixie.Tests.Reputation;

public sealed class ReputationApiTests
{
    static HttpClient Client(Platform p) => new() { BaseAddress = new Uri(p.DixieUrl + "/") };

    static string ServiceToken(Platform p) =>
        p.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", "loa-dixie", new Dictionary<string, object> { ["sub"] = "test" });

    static async Task<HttpResponseMessage> PostEventAsync(Platform p, object body, bool auth = true)
    {
        using var http = Client(p);
        using var request = new HttpRequestMessage(HttpMethod.Post, "api/reputation/events")
        {
            Content = new StringContent(body is string s ? s : JsonSerializer.Serialize(body), Encoding.UTF8, "application/json"),
        };
        if (auth)
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", ServiceToken(p));
        }

        return await http.SendAsync(request, TestContext.Current.CancellationToken);
    }

    static async Task<JsonObject> QueryAsync(Platform p, string key)
    {
        using var http = Client(p);
        using var response = await http.GetAsync("api/reputation/query?routingKey=" + Uri.EscapeDataString(key), TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return (await response.Content.ReadFromJsonAsync<JsonObject>(TestContext.Current.CancellationToken))!;
    }

    static Dictionary<string, object?> Ev(string id, object score, string key = "nft:test", string? model = null) => new()
    {
        ["event_id"] = id,
        ["routing_key"] = key,
        ["score"] = score,
        ["source"] = "test",
        ["model"] = model,
        ["pool"] = model is null ? null : "cheap",
        ["timestamp"] = DateTimeOffset.UtcNow.ToString("O"),
    };

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Public_query_is_null_before_data_and_changes_within_one_second_of_an_event(string engine)
    {
        await using var p = await Platform.StartAsync(engine);
        var baseline = await QueryAsync(p, "nft:test");
        Assert.True(baseline.ContainsKey("score"));
        Assert.Null(baseline["score"]);
        Assert.Equal(0, baseline["sample_count"]!.GetValue<long>());

        // Warm up (dixie fetches freeside's JWKS on the first token) and warm the cache: the write must invalidate it.
        using (var warm = await PostEventAsync(p, Ev("warm-up", "fair", "nft:other")))
        {
            Assert.Equal(HttpStatusCode.OK, warm.StatusCode);
        }

        await QueryAsync(p, "nft:test");
        var sw = Stopwatch.StartNew();
        foreach (var (id, q) in new[] { ("q1", "good"), ("q2", "excellent"), ("q3", "good") })
        {
            using var r = await PostEventAsync(p, Ev(id, q, model: "local-mini-a"));
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        }

        JsonObject after;
        do
        {
            after = await QueryAsync(p, "nft:test");
        }
        while (after["score"] is null && sw.Elapsed < TimeSpan.FromSeconds(1));

        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(1), $"score visible after {sw.ElapsedMilliseconds} ms");
        // Beta(1 + 2.5, 1 + 0.5) → 3.5 / 5.
        Assert.Equal(0.7, after["score"]!.GetValue<double>(), 5);
        Assert.Equal(3, after["sample_count"]!.GetValue<long>());
        Assert.InRange(after["lower_bound"]!.GetValue<double>(), 0.3, 0.7);
        Assert.Equal("nft:test", after["routing_key"]!.GetValue<string>());
        Assert.Equal(0.7, after["models"]!["local-mini-a"]!["score"]!.GetValue<double>(), 5);
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Events_are_idempotent_conflicts_are_409_and_32_concurrent_duplicates_update_once(string engine)
    {
        await using var p = await Platform.StartAsync(engine);
        var ct = TestContext.Current.CancellationToken;

        var dup = Ev("dup-1", 1.0, "nft:0xabc:42", "local-mini-b");
        using var first = await PostEventAsync(p, dup);
        var firstBody = await first.Content.ReadAsStringAsync(ct);
        Assert.Equal(HttpStatusCode.OK, first.StatusCode);
        using var again = await PostEventAsync(p, new Dictionary<string, object?>(dup));
        Assert.Equal(HttpStatusCode.OK, again.StatusCode);
        Assert.Equal(firstBody, await again.Content.ReadAsStringAsync(ct));
        Assert.Equal("true", again.Headers.GetValues("Idempotency-Replayed").Single());

        using var conflict = await PostEventAsync(p, new Dictionary<string, object?>(dup) { ["score"] = 0.0 });
        Assert.Equal(HttpStatusCode.Conflict, conflict.StatusCode);
        var problem = await conflict.Content.ReadFromJsonAsync<JsonObject>(ct);
        Assert.Equal("EVENT_ID_CONFLICT", problem!["error"]!.GetValue<string>());

        var payload = Ev("burst", "excellent", "nft:burst", "local-mini-a");
        var responses = await Task.WhenAll(Enumerable.Range(0, 32).Select(_ => PostEventAsync(p, payload)));
        Assert.All(responses, r => Assert.Equal(HttpStatusCode.OK, r.StatusCode));
        Assert.Equal(31, responses.Count(r => r.Headers.Contains("Idempotency-Replayed")));
        foreach (var r in responses)
        {
            r.Dispose();
        }

        var q = await QueryAsync(p, "nft:burst");
        Assert.Equal(1, q["sample_count"]!.GetValue<long>());
        Assert.Equal(2.0 / 3, q["score"]!.GetValue<double>(), 5);
        Assert.Equal(1.0, (await QueryAsync(p, "nft:0xabc:42"))["sample_count"]!.GetValue<double>());
    }

    /// <summary>
    /// A contract address is case-insensitive hex and wallets show it checksummed (mixed case): events and queries in any
    /// spelling are one agent. Before, each spelling had its own score, and an event id sent again in another spelling
    /// was a second event.
    /// </summary>
    [Fact]
    public async Task An_address_key_in_any_case_is_one_agent()
    {
        await using var p = await Platform.StartAsync("sqlite");
        const string mixed = "nft:0xAbCdEf0000000000000000000000000000000001:7";
        var first = Ev("case-1", 1.0, mixed, "m1");
        Assert.Equal(HttpStatusCode.OK, (await PostEventAsync(p, first)).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await PostEventAsync(p, Ev("case-2", "good", mixed.ToLowerInvariant(), "m1"))).StatusCode);
        first["routing_key"] = "nft:0xABCDEF0000000000000000000000000000000001:7";
        using var again = await PostEventAsync(p, first); // the same event in another spelling: a replay, not a second event
        Assert.Equal("true", again.Headers.TryGetValues("Idempotency-Replayed", out var replayed) ? replayed.Single() : (await again.Content.ReadAsStringAsync(TestContext.Current.CancellationToken)));

        foreach (var spelling in new[] { mixed, mixed.ToLowerInvariant(), "nft:0xABCDEF0000000000000000000000000000000001:7" })
        {
            var q = await QueryAsync(p, spelling);
            Assert.Equal((2L, "nft:0xabcdef0000000000000000000000000000000001:7"), (q["sample_count"]!.GetValue<long>(), q["routing_key"]!.GetValue<string>()));
        }
    }

    [Fact]
    public async Task Validation_names_the_field_and_auth_is_required_for_writes()
    {
        await using var p = await Platform.StartAsync();
        var ct = TestContext.Current.CancellationToken;

        using (var noAuth = await PostEventAsync(p, Ev("x", "good"), auth: false))
        {
            Assert.Equal(HttpStatusCode.Unauthorized, noAuth.StatusCode);
        }

        var cases = new (string Field, Func<Dictionary<string, object?>, object> Mutate)[]
        {
            ("event_id", e => { e.Remove("event_id"); return e; }),
            ("event_id", e => { e["event_id"] = "has space"; return e; }),
            ("routing_key", e => { e["routing_key"] = "user:1"; return e; }),
            ("routing_key", e => { e["routing_key"] = "nft:a:b:c"; return e; }),
            ("score", e => { e["score"] = 1.5; return e; }),
            ("score", e => { e["score"] = "great"; return e; }),
            ("score", e => { e.Remove("score"); return e; }),
            ("source", e => { e.Remove("source"); return e; }),
            ("model", e => { e["model"] = 7; return e; }),
            // Whitespace alone names nothing, as an empty string does.
            ("source", e => { e["source"] = "   "; return e; }),
            ("model", e => { e["model"] = " \u00a0 "; return e; }),
            ("pool", e => { e["pool"] = "  "; return e; }),
            ("timestamp", e => { e["timestamp"] = "yesterday"; return e; }),
            // Scores decay from the event's timestamp, so it must mean one instant: RFC 3339 with an offset, or unix ms.
            ("timestamp", e => { e["timestamp"] = "03/04/2026"; return e; }),
            ("timestamp", e => { e["timestamp"] = "2026-03-04"; return e; }),
            ("timestamp", e => { e["timestamp"] = "2026-03-04T10:00:00"; return e; }),
            ("timestamp", e => { e["timestamp"] = DateTimeOffset.UtcNow.ToUnixTimeSeconds(); return e; }),
            // The same floor for a date-time: an unset date (C#'s default, the unix epoch) would count as a sample of no weight.
            ("timestamp", e => { e["timestamp"] = default(DateTimeOffset).ToString("O"); return e; }),
            ("timestamp", e => { e["timestamp"] = "1970-01-01T00:00:00Z"; return e; }),
            ("timestamp", e => { e.Remove("timestamp"); return e; }),
            ("colour", e => { e["colour"] = "blue"; return e; }),
            ("body", _ => "[1,2]"),
            ("body", _ => "{not json"),
        };
        foreach (var (field, mutate) in cases)
        {
            using var r = await PostEventAsync(p, mutate(Ev("v-1", "good")));
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            var problem = await r.Content.ReadFromJsonAsync<JsonObject>(ct);
            Assert.Equal("INVALID_REQUEST", problem!["error"]!.GetValue<string>());
            Assert.Equal(field, problem["field"]!.GetValue<string>());
        }

        using var http = Client(p);
        foreach (var bad in new[] { "", "test", "nft:", "nft:a b", "nft:a:b:c", "nft:" + new string('x', 129) })
        {
            using var r = await http.GetAsync("api/reputation/query?routingKey=" + Uri.EscapeDataString(bad), ct);
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
        }

        using (var models = await http.GetAsync("api/reputation/models?routingKey=nft:test", ct))
        {
            Assert.Equal(HttpStatusCode.Unauthorized, models.StatusCode);
        }

        using (var good = await PostEventAsync(p, Ev("label-1", "poor", "nft:v", "m1")))
        {
            Assert.Equal(HttpStatusCode.OK, good.StatusCode);
        }

        using var request = new HttpRequestMessage(HttpMethod.Get, "api/reputation/models?routingKey=nft:v");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer",
            p.Finn.Services.GetRequiredService<TokenIssuer>().Mint("loa-finn", "loa-dixie", new Dictionary<string, object> { ["sub"] = "finn" }));
        using var modelsOk = await http.SendAsync(request, ct);
        Assert.Equal(HttpStatusCode.OK, modelsOk.StatusCode);
        var m1 = (await modelsOk.Content.ReadFromJsonAsync<JsonObject>(ct))!["models"]!["m1"]!;
        Assert.Equal(1.25, m1["alpha"]!.GetValue<double>(), 5);
        Assert.Equal(1.75, m1["beta"]!.GetValue<double>(), 5);
        Assert.Equal(1.25 / 3, m1["score"]!.GetValue<double>(), 5);
        Assert.Equal(1, m1["sample_count"]!.GetValue<long>());
    }

    /// <summary>
    /// Text PostgreSQL cannot store (a lone surrogate, invalid UTF-8) and repeated names are 400 naming the field; both
    /// kinds of text used to throw (500). A key with a trailing newline, which <c>$</c> let through, is refused by the
    /// query routes too.
    /// </summary>
    [Fact]
    public async Task Invalid_text_repeated_names_and_newline_keys_are_400_naming_the_field()
    {
        await using var p = await Platform.StartAsync();
        var ct = TestContext.Current.CancellationToken;
        var now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        string Event(string extra) => $$"""{"event_id":"t-1","routing_key":"nft:t","score":0.5,"source":"test","timestamp":{{now}}{{extra}}}""";
        var cases = new (string Field, byte[] Body)[]
        {
            ("source", Encoding.UTF8.GetBytes(Event("").Replace("\"test\"", "\"te\\ud800st\"", StringComparison.Ordinal))),
            ("model", Encoding.UTF8.GetBytes(Event(",\"model\":\"\\udc00\""))),
            ("trace_id", [.. Encoding.UTF8.GetBytes(Event(",\"trace_id\":\"tr")[..^1]), 0xfe, .. "\"}"u8]),
            ("body", [.. Encoding.UTF8.GetBytes(Event(",\"")[..^1]), 0xc3, .. "\":1}"u8]),
            ("score", Encoding.UTF8.GetBytes(Event(",\"score\":0.9"))),
            ("routing_key", Encoding.UTF8.GetBytes(Event("").Replace("\"nft:t\"", "\"nft:t\\n\"", StringComparison.Ordinal))),
        };
        using var http = Client(p);
        var wrong = new List<string>();
        foreach (var (field, body) in cases)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "api/reputation/events")
            {
                Content = new ByteArrayContent(body) { Headers = { ContentType = new MediaTypeHeaderValue("application/json") } },
            };
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", ServiceToken(p));
            using var r = await http.SendAsync(request, ct);
            if (ProblemBodies.Mismatch(r.StatusCode, await r.Content.ReadAsStringAsync(ct), field) is { } miss)
            {
                wrong.Add(miss);
            }
        }

        foreach (var route in new[] { "query", "models" })
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, $"api/reputation/{route}?routingKey=" + Uri.EscapeDataString("nft:t\n"));
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer",
                p.Finn.Services.GetRequiredService<TokenIssuer>().Mint("loa-finn", "loa-dixie", new Dictionary<string, object> { ["sub"] = "finn" }));
            using var r = await http.SendAsync(request, ct);
            if (ProblemBodies.Mismatch(r.StatusCode, await r.Content.ReadAsStringAsync(ct), "routingKey") is { } miss)
            {
                wrong.Add(route + " " + miss);
            }
        }

        Assert.True(wrong.Count == 0, string.Join("; ", wrong));
        Assert.Equal(0, (await QueryAsync(p, "nft:t"))["sample_count"]!.GetValue<long>());
    }

    [Fact]
    public async Task Health_reports_reputation_and_metrics_count_events()
    {
        await using var p = await Platform.StartAsync();
        var ct = TestContext.Current.CancellationToken;
        using (var r = await PostEventAsync(p, Ev("h-1", 0.5)))
        {
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        }

        await QueryAsync(p, "nft:test");
        using var http = Client(p);
        var health = await http.GetFromJsonAsync<JsonObject>("api/health", ct);
        Assert.Equal("healthy", health!["checks"]!["reputation"]!["status"]!.GetValue<string>());
        Assert.Equal(1, health["checks"]!["reputation"]!["data"]!["agents"]!.GetValue<long>());
        var metrics = await http.GetStringAsync("metrics", ct);
        Assert.Contains("reputation_events_accepted", metrics);
        Assert.Contains("reputation_query_duration_ms", metrics);
    }
}
