using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Arrakis.Freeside.Audit;
using Arrakis.Freeside.Seeding;
using Arrakis.Shared.Storage;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Arrakis.Freeside.Tests.Invoke;

/// <summary>freeside → finn → local provider over real HTTP, with the launch gate's exact bodies.</summary>
public sealed class InvokeTests
{
    const string Community = "test-community-staging-001";
    static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(60) };

    static async Task<Platform> StartSeededAsync(string engine = "sqlite", IDictionary<string, string?>? settings = null, RecordingLoggerProvider? logs = null)
    {
        var platform = await Platform.StartAsync(engine, settings, logs is null ? null : (service, b) =>
        {
            if (service == "freeside")
            {
                b.Logging.AddProvider(logs);
            }
        });
        await Seeder.For(platform.Freeside.Services.GetRequiredService<Database>()).SeedAsync(TestContext.Current.CancellationToken);
        return platform;
    }

    /// <summary>A fresh user token shaped like the checklist's (tenant test-tenant, free, cheap only).</summary>
    static string UserToken(Platform p) =>
        p.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", "arrakis", new Dictionary<string, object>
        {
            ["v"] = 1,
            ["tenant_id"] = "test-tenant",
            ["access_level"] = "free",
            ["pool_id"] = "cheap",
            ["allowed_pools"] = new[] { "cheap" },
        }, TimeSpan.FromMinutes(5));

    static async Task<HttpResponseMessage> InvokeAsync(Platform p, string body, bool sse = false, string? idempotencyHeader = null,
        HttpCompletionOption completion = HttpCompletionOption.ResponseContentRead, CancellationToken? ct = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, p.FreesideUrl + "/api/agents/invoke")
        {
            Content = new StringContent(body, Encoding.UTF8, "application/json"),
        };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", UserToken(p));
        if (sse)
        {
            request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("text/event-stream"));
        }

        if (idempotencyHeader is not null)
        {
            request.Headers.Add("X-Idempotency-Key", idempotencyHeader);
        }

        return await Http.SendAsync(request, completion, ct ?? TestContext.Current.CancellationToken);
    }

    static async Task<JsonElement> BudgetAsync(Platform p)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, $"{p.FreesideUrl}/api/v1/communities/{Community}/budget");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", UserToken(p));
        using var response = await Http.SendAsync(request, TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken);
    }

    static async Task AssertConservedAsync(Platform p)
    {
        var report = await p.Freeside.Services.GetRequiredService<ConservationAudit>().RunAsync(TestContext.Current.CancellationToken);
        Assert.True(report.Passed, string.Join("\n", report.Communities.SelectMany(c => c.Checks).SelectMany(c => c.Violations)));
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task The_gates_invoke_body_returns_a_json_object_with_content_and_charges_the_metered_cost(string engine)
    {
        await using var p = await StartSeededAsync(engine);
        var before = await BudgetAsync(p);

        using var response = await InvokeAsync(p, """{"prompt":"Say hello in exactly 3 words","model":"cheap"}""");

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var bytes = await response.Content.ReadAsByteArrayAsync(TestContext.Current.CancellationToken);
        // Not chunked, with its length on the wire (ContentLength alone would be computed from the buffered body): the
        // client has the whole answer before freeside writes its log line.
        Assert.NotEqual(true, response.Headers.TransferEncodingChunked);
        Assert.Equal(bytes.Length.ToString(System.Globalization.CultureInfo.InvariantCulture), Assert.Single(response.Content.Headers.NonValidated["Content-Length"]));
        var body = JsonDocument.Parse(bytes).RootElement;
        Assert.Equal(JsonValueKind.Object, body.ValueKind);
        Assert.False(string.IsNullOrWhiteSpace(body.GetProperty("content").GetString()));
        Assert.Equal("cheap", body.GetProperty("pool").GetString());
        Assert.StartsWith("local-mini-", body.GetProperty("model").GetString(), StringComparison.Ordinal);
        Assert.Equal("local", body.GetProperty("provider").GetString());
        Assert.True(body.GetProperty("simulated").GetBoolean());
        var cost = body.GetProperty("cost_micro").GetInt64();
        Assert.True(cost > 0);
        Assert.True(body.GetProperty("usage").GetProperty("completion_tokens").GetInt64() > 0);
        Assert.Equal("enabled", body.GetProperty("routing").GetProperty("mode").GetString());

        var after = await BudgetAsync(p);
        Assert.Equal(before.GetProperty("committedMicro").GetInt64() + cost, after.GetProperty("committedMicro").GetInt64());
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
        await AssertConservedAsync(p);
    }

    [Fact]
    public async Task Streaming_on_the_invoke_path_sends_delta_frames_then_a_done_frame_with_usage()
    {
        await using var p = await StartSeededAsync();

        using var response = await InvokeAsync(p, """{"prompt":"Say hi","model":"cheap","stream":true}""", sse: true);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        var text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        var data = text.Split('\n').Where(l => l.StartsWith("data:", StringComparison.Ordinal)).Select(l => JsonDocument.Parse(l[5..]).RootElement).ToList();
        Assert.Contains(data, d => d.TryGetProperty("type", out var t) && t.GetString() == "delta");
        var done = data[^1];
        Assert.True(done.GetProperty("cost_micro").GetInt64() > 0);
        var streamed = string.Concat(data.Where(d => d.TryGetProperty("type", out var t) && t.GetString() == "delta").Select(d => d.GetProperty("content").GetString()));
        Assert.Equal(done.GetProperty("content").GetString(), streamed);
        Assert.Contains("event: done", text, StringComparison.Ordinal);
        Assert.Equal(0, (await BudgetAsync(p)).GetProperty("reservedMicro").GetInt64());
    }

    /// <summary>
    /// A streamed call's key replays as SSE, framed as a live stream: the same start frame, one delta with the whole
    /// content, the same done frame, each with an increasing <c>id:</c>; charged once.
    /// </summary>
    [Fact]
    public async Task A_streamed_key_replays_the_same_done_frame_as_sse_and_charges_once()
    {
        await using var p = await StartSeededAsync();
        const string body = """{"prompt":"Say hi","model":"cheap","stream":true,"idempotency_key":"stream-replay-1"}""";
        var before = (await BudgetAsync(p)).GetProperty("committedMicro").GetInt64();

        static (string Start, string Content, string Done) Read(string text)
        {
            var frames = text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Where(f => !f.StartsWith(':')).ToList();
            string Line(string f, string field) => f.Split('\n').Single(l => l.StartsWith(field + ":", StringComparison.Ordinal))[(field.Length + 1)..].TrimStart();
            Assert.Equal("start", Line(frames[0], "event"));
            Assert.Equal("done", Line(frames[^1], "event"));
            var ids = frames.Select(f => long.Parse(Line(f, "id"), System.Globalization.CultureInfo.InvariantCulture)).ToList();
            Assert.Equal(Enumerable.Range(0, frames.Count).Select(i => (long)i), ids);
            var content = string.Concat(frames.Where(f => Line(f, "event") == "delta").Select(f => JsonDocument.Parse(Line(f, "data")).RootElement.GetProperty("content").GetString()));
            return (Line(frames[0], "data"), content, Line(frames[^1], "data"));
        }

        using var first = await InvokeAsync(p, body, sse: true);
        var live = Read(await first.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
        using var second = await InvokeAsync(p, body, sse: true);
        Assert.Equal(HttpStatusCode.OK, second.StatusCode);
        Assert.Equal("text/event-stream", second.Content.Headers.ContentType?.MediaType);
        Assert.Equal("true", second.Headers.GetValues("Idempotency-Replayed").Single());
        Assert.Equal(first.Headers.GetValues("Idempotency-Key").Single(), second.Headers.GetValues("Idempotency-Key").Single()); // as the first answer had it
        var replayed = Read(await second.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));

        Assert.Equal(live, replayed);
        Assert.Equal("stream-replay-1", JsonDocument.Parse(live.Start).RootElement.GetProperty("idempotency_key").GetString());
        var cost = JsonDocument.Parse(live.Done).RootElement.GetProperty("cost_micro").GetInt64();
        Assert.True(cost > 0);
        Assert.Equal(before + cost, (await BudgetAsync(p)).GetProperty("committedMicro").GetInt64());
        await AssertConservedAsync(p);
    }

    [Fact]
    public async Task The_duplicate_chaos_body_sent_twice_charges_once_and_replays_the_same_response()
    {
        await using var p = await StartSeededAsync();
        const string body = """{"prompt":"Chaos test 1","model":"cheap","idempotency_key":"chaos-smoke-dup-001"}""";
        var before = (await BudgetAsync(p)).GetProperty("committedMicro").GetInt64();

        using var first = await InvokeAsync(p, body);
        using var second = await InvokeAsync(p, body);

        Assert.Equal(HttpStatusCode.OK, first.StatusCode);
        Assert.Equal(HttpStatusCode.OK, second.StatusCode);
        var a = await first.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        var b = await second.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        Assert.Equal(a, b);
        Assert.NotEqual(true, second.Headers.TransferEncodingChunked); // the replay, too
        Assert.Equal(System.Text.Encoding.UTF8.GetByteCount(b).ToString(System.Globalization.CultureInfo.InvariantCulture), Assert.Single(second.Content.Headers.NonValidated["Content-Length"]));
        var cost = JsonDocument.Parse(a).RootElement.GetProperty("cost_micro").GetInt64();
        Assert.Equal(before + cost, (await BudgetAsync(p)).GetProperty("committedMicro").GetInt64());

        using var reused = await InvokeAsync(p, """{"prompt":"Something else","model":"cheap","idempotency_key":"chaos-smoke-dup-001"}""");
        Assert.Equal(HttpStatusCode.Conflict, reused.StatusCode);
        Assert.Equal("IDEMPOTENCY_KEY_REUSED", (await reused.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("error").GetString());
        await AssertConservedAsync(p);
    }

    /// <summary>
    /// While a key's first request runs, the same key gets 409 REQUEST_IN_PROGRESS and reserves nothing; once it finished,
    /// the key replays. A key whose request failed is freed: a retry runs again instead of meeting a stuck claim.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_key_still_running_gets_409_and_a_key_whose_call_failed_is_free_again(string engine)
    {
        await using var p = await StartSeededAsync(engine, new Dictionary<string, string?> { ["Providers:Local:LatencyMs"] = "1500" });
        var db = p.Freeside.Services.GetRequiredService<Database>();
        async Task<long> CountAsync(string sql)
        {
            await using var c = await db.OpenAsync(TestContext.Current.CancellationToken);
            return await Dapper.SqlMapper.ExecuteScalarAsync<long>(c, sql);
        }

        const string body = """{"prompt":"Hold on","model":"cheap","idempotency_key":"slow-key-1"}""";
        var before = (await BudgetAsync(p)).GetProperty("committedMicro").GetInt64();
        var first = InvokeAsync(p, body);
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (await CountAsync("SELECT COUNT(*) FROM idempotency_keys WHERE idem_key = 'slow-key-1' AND state = 'in_progress'") == 0)
        {
            Assert.True(waited.Elapsed < TimeSpan.FromSeconds(10), "the first request never claimed its key");
            await Task.Delay(10, TestContext.Current.CancellationToken);
        }

        using (var second = await InvokeAsync(p, body))
        {
            Assert.Equal(HttpStatusCode.Conflict, second.StatusCode);
            Assert.Equal("REQUEST_IN_PROGRESS", (await second.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("error").GetString());
        }

        Assert.Equal(1, await CountAsync("SELECT COUNT(*) FROM reservations WHERE status = 'pending'")); // the 409 reserved nothing
        using var done = await first;
        Assert.Equal(HttpStatusCode.OK, done.StatusCode);
        var answer = await done.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        using (var replay = await InvokeAsync(p, body))
        {
            Assert.Equal(HttpStatusCode.OK, replay.StatusCode);
            Assert.Equal("true", replay.Headers.GetValues("Idempotency-Replayed").Single());
            Assert.Equal(done.Headers.GetValues("Idempotency-Key").Single(), replay.Headers.GetValues("Idempotency-Key").Single());
            Assert.Equal(answer, await replay.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
        }

        Assert.Equal(before + JsonDocument.Parse(answer).RootElement.GetProperty("cost_micro").GetInt64(), (await BudgetAsync(p)).GetProperty("committedMicro").GetInt64());

        await p.Finn.StopAsync(TestContext.Current.CancellationToken);
        const string failing = """{"prompt":"Hold on","model":"cheap","idempotency_key":"failed-key-1"}""";
        for (var attempt = 0; attempt < 2; attempt++) // the retry meets finn again (503), not a claim left behind (409)
        {
            using var failed = await InvokeAsync(p, failing);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, failed.StatusCode);
        }

        Assert.Equal(0, await CountAsync("SELECT COUNT(*) FROM idempotency_keys WHERE idem_key = 'failed-key-1'"));
        Assert.Equal(0, (await BudgetAsync(p)).GetProperty("reservedMicro").GetInt64());
        await AssertConservedAsync(p);
    }

    /// <summary>
    /// freeside serializes finn's body and signs its token while the reservation waits on the database (always so on
    /// PostgreSQL). The call finn gets must still bind this request: its reservation, its trace and its exact body; and a
    /// refused reservation must send nothing.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task The_finn_call_binds_this_requests_reservation_trace_and_body_and_a_refused_reservation_sends_none(string engine)
    {
        var sent = new System.Collections.Concurrent.ConcurrentQueue<(string Token, byte[] Body)>();
        await using var p = await Platform.StartAsync(engine, configure: (service, b) =>
        {
            if (service == "freeside")
            {
                b.Services.AddHttpClient(Freeside.Identity.IdentitySetup.FinnClient).AddHttpMessageHandler(() => new CaptureHandler(sent));
            }
        });
        var db = p.Freeside.Services.GetRequiredService<Database>();
        await Seeder.For(db).SeedAsync(TestContext.Current.CancellationToken);

        var traces = new List<string>();
        for (var i = 0; i < 3; i++)
        {
            using var response = await InvokeAsync(p, $$"""{"prompt":"Say hello in exactly 3 words ({{i}})","model":"cheap"}""");
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            traces.Add((await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("trace_id").GetString()!);
        }

        Assert.Equal(3, sent.Count);
        await using (var c = await db.OpenAsync(TestContext.Current.CancellationToken))
        {
            foreach (var ((token, body), trace) in sent.Zip(traces))
            {
                var claims = new Microsoft.IdentityModel.JsonWebTokens.JsonWebToken(token);
                Assert.Equal(trace, claims.GetPayloadValue<string>("trace_id"));
                Assert.Equal(Shared.Contracts.FinnContract.RequestHash(body), claims.GetPayloadValue<string>("req_hash"));
                Assert.Equal(trace, JsonDocument.Parse(body).RootElement.GetProperty("trace_id").GetString());
                var reservation = await Dapper.SqlMapper.QuerySingleAsync<string>(c, "SELECT id FROM usage_records WHERE trace_id = @trace", new { trace });
                Assert.Equal(reservation, claims.GetPayloadValue<string>("reservation_id"));
            }

            // Nothing left of this month's budget: the next reservation is refused.
            await Dapper.SqlMapper.ExecuteAsync(c, "UPDATE budget_months SET limit_micro = committed_micro + reserved_micro WHERE community_id = @community", new { community = Community });
        }

        var before = await BudgetAsync(p);
        using (var refused = await InvokeAsync(p, """{"prompt":"Say hi","model":"cheap"}"""))
        {
            Assert.Equal(HttpStatusCode.PaymentRequired, refused.StatusCode);
            Assert.Equal("BUDGET_EXCEEDED", (await refused.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("error").GetString());
        }

        Assert.Equal(3, sent.Count);
        var after = await BudgetAsync(p);
        Assert.Equal(before.GetProperty("committedMicro").GetInt64(), after.GetProperty("committedMicro").GetInt64());
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
        await AssertConservedAsync(p);
    }

    sealed class CaptureHandler(System.Collections.Concurrent.ConcurrentQueue<(string Token, byte[] Body)> sent) : DelegatingHandler
    {
        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            sent.Enqueue((request.Headers.Authorization!.Parameter!, await request.Content!.ReadAsByteArrayAsync(cancellationToken)));
            return await base.SendAsync(request, cancellationToken);
        }
    }

    [Fact]
    public async Task An_architect_request_on_the_free_tier_gets_402_with_x402_requirements_not_403()
    {
        await using var p = await StartSeededAsync();
        var before = await BudgetAsync(p);

        using var response = await InvokeAsync(p, """{"prompt":"Write a 10000 word essay on chaos engineering","model":"architect"}""");

        Assert.Equal(HttpStatusCode.PaymentRequired, response.StatusCode);
        var body = await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken);
        Assert.Equal("TIER_UPGRADE_REQUIRED", body.GetProperty("error").GetString());
        Assert.True(response.Headers.Contains("PAYMENT-REQUIRED"));
        Assert.True(response.Headers.Contains("X-Price"));
        Assert.True(body.GetProperty("amount").ValueKind is JsonValueKind.String or JsonValueKind.Number);
        Assert.Equal(before.GetProperty("committedMicro").GetInt64(), (await BudgetAsync(p)).GetProperty("committedMicro").GetInt64());
    }

    /// <summary>
    /// A pool the community's tier allows but the token's allowed_pools leaves out is still a 402 with the x402 terms, but
    /// its detail says what stands in the way: it told a free community that pool cheap "needs the free tier; this
    /// community is free. Upgrade", advice no upgrade could satisfy.
    /// </summary>
    [Fact]
    public async Task A_pool_the_tier_allows_but_the_token_does_not_says_so_instead_of_asking_for_an_upgrade()
    {
        await using var p = await StartSeededAsync();
        var token = p.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", "arrakis", new Dictionary<string, object>
        {
            ["tenant_id"] = "test-tenant",
            ["allowed_pools"] = new[] { "fast-code" },
        }, TimeSpan.FromMinutes(5));
        using var request = new HttpRequestMessage(HttpMethod.Post, p.FreesideUrl + "/api/agents/invoke")
        {
            Content = new StringContent("""{"prompt":"hi","model":"cheap"}""", Encoding.UTF8, "application/json"),
        };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);

        using var response = await Http.SendAsync(request, TestContext.Current.CancellationToken);

        Assert.Equal(HttpStatusCode.PaymentRequired, response.StatusCode);
        var body = await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken);
        Assert.Equal("TIER_UPGRADE_REQUIRED", body.GetProperty("error").GetString());
        Assert.True(response.Headers.Contains("PAYMENT-REQUIRED"));
        var detail = body.GetProperty("detail").GetString()!;
        Assert.Contains("allowed_pools", detail, StringComparison.Ordinal);
        Assert.DoesNotContain("Upgrade", detail, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("""{"model":"cheap"}""", "prompt")]
    [InlineData("""{"prompt":"hi","model":"nope"}""", "model")]
    [InlineData("""{"prompt":"hi","max_tokens":-1}""", "max_tokens")]
    [InlineData("""[1,2]""", "body")]
    [InlineData("""{"messages":[{"role":"robot","content":"x"}]}""", "messages[0]")]
    [InlineData("""{"prompt":"hi","model":"architect","max_tokens":8193}""", "max_tokens")] // above the pool's limit: 400, not a 402 quoting a call the paid route refuses
    public async Task Bad_bodies_get_400_naming_the_field_and_charge_nothing(string body, string field)
    {
        await using var p = await StartSeededAsync();
        using var response = await InvokeAsync(p, body);
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        var problem = await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken);
        Assert.Equal("INVALID_REQUEST", problem.GetProperty("error").GetString());
        Assert.Equal(field, problem.GetProperty("field").GetString());
        Assert.Equal(0, (await BudgetAsync(p)).GetProperty("reservedMicro").GetInt64());
    }

    /// <summary>
    /// Text the database and the JSON writers cannot keep (a lone surrogate, invalid UTF-8), a repeated name and an agent
    /// key with a trailing newline: each is 400 naming its field, before anything is reserved.
    /// </summary>
    [Fact]
    public async Task Invalid_text_repeated_names_and_bad_agent_keys_get_400_naming_the_field_and_charge_nothing()
    {
        await using var p = await StartSeededAsync();
        var before = await BudgetAsync(p);
        var cases = new (string Field, byte[] Body)[]
        {
            ("prompt", Encoding.UTF8.GetBytes("""{"prompt":"hi \ud800","model":"cheap"}""")),
            ("messages[1].content", Encoding.UTF8.GetBytes("""{"messages":[{"role":"system","content":"ok"},{"role":"user","content":"\udc00"}]}""")),
            ("prompt", [.. "{\"prompt\":\"hi "u8, 0xff, 0xfe, .. "\"}"u8]),
            ("body", [.. "{\"prompt\":\"hi\",\""u8, 0xc3, .. "\":1}"u8]),
            ("prompt", Encoding.UTF8.GetBytes("""{"prompt":"hi","prompt":"there"}""")),
            ("agent", Encoding.UTF8.GetBytes("""{"prompt":"hi","agent":"nft:1\n"}""")),
            ("agent", Encoding.UTF8.GetBytes("""{"prompt":"hi","agent":"nft:a.b"}""")),
        };
        var wrong = new List<string>();
        foreach (var (field, body) in cases)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, p.FreesideUrl + "/api/agents/invoke")
            {
                Content = new ByteArrayContent(body) { Headers = { ContentType = new MediaTypeHeaderValue("application/json") } },
            };
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", UserToken(p));
            using var response = await Http.SendAsync(request, TestContext.Current.CancellationToken);
            if (ProblemBodies.Mismatch(response.StatusCode, await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken), field) is { } miss)
            {
                wrong.Add(miss);
            }
        }

        Assert.True(wrong.Count == 0, string.Join("; ", wrong));

        var after = await BudgetAsync(p);
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
        Assert.Equal(before.GetProperty("committedMicro").GetInt64(), after.GetProperty("committedMicro").GetInt64());
    }

    /// <summary>
    /// The key is echoed in the <c>Idempotency-Key</c> response header, which only carries printable ASCII: a body key
    /// with "é" or a control character was charged and then answered 500 (JSON), or answered 500 with its reservation and
    /// key left held until the reaper (SSE). Such a key is 400 naming its field before anything is reserved.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_body_idempotency_key_that_is_not_printable_ascii_gets_400_naming_the_field_and_charges_nothing(string engine)
    {
        await using var p = await StartSeededAsync(engine);
        var before = await BudgetAsync(p);
        var wrong = new List<string>();
        foreach (var sse in new[] { false, true })
        {
            foreach (var (field, body) in new[]
            {
                ("idempotency_key", """{"prompt":"hi","idempotency_key":"caf\u00e9-{0}"}"""),
                ("idempotencyKey", """{"prompt":"hi","idempotencyKey":"a\u0001b-{0}"}"""),
                ("idempotency_key", """{"prompt":"hi","idempotency_key":"\ud83d\ude00-{0}"}"""),
                ("idempotency_key", """{"prompt":"hi","idempotency_key":"tab\tkey-{0}"}"""),
            })
            {
                using var response = await InvokeAsync(p, body.Replace("{0}", sse ? "sse" : "json", StringComparison.Ordinal), sse);
                var text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
                if (ProblemBodies.Mismatch(response.StatusCode, text, field, "INVALID_IDEMPOTENCY_KEY") is { } miss)
                {
                    wrong.Add((sse ? "sse " : "json ") + miss);
                }
            }
        }

        Assert.True(wrong.Count == 0, string.Join("; ", wrong));
        var after = await BudgetAsync(p);
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
        Assert.Equal(before.GetProperty("committedMicro").GetInt64(), after.GetProperty("committedMicro").GetInt64());
        await AssertConservedAsync(p);

        // Printable ASCII (spaces and punctuation included) is still a key, echoed in the header.
        using var ok = await InvokeAsync(p, """{"prompt":"hi","idempotency_key":"order 42/#a~"}""");
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
        Assert.Equal("order 42/#a~", ok.Headers.GetValues("Idempotency-Key").Single());
    }

    /// <summary>A tenant no community knows is 403, and the refusal repeats at most 64 characters of the caller's value.</summary>
    [Fact]
    public async Task An_unmapped_tenant_is_403_and_its_refusal_repeats_at_most_64_characters_of_it()
    {
        await using var p = await StartSeededAsync();
        var tenant = "nobody-" + new string('x', 20_000);
        var token = p.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", "arrakis",
            new Dictionary<string, object> { ["tenant_id"] = tenant, ["access_level"] = "free" }, TimeSpan.FromMinutes(5));
        using var request = new HttpRequestMessage(HttpMethod.Post, p.FreesideUrl + "/api/agents/invoke")
        {
            Content = new StringContent("""{"prompt":"Hi","model":"cheap"}""", Encoding.UTF8, "application/json"),
        };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        using var response = await Http.SendAsync(request, TestContext.Current.CancellationToken);

        Assert.Equal(HttpStatusCode.Forbidden, response.StatusCode);
        var detail = (await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("detail").GetString()!;
        Assert.Equal($"Tenant '{tenant[..64]}…' is not mapped to a community.", detail);
    }

    [Fact]
    public async Task When_every_model_fails_the_caller_gets_502_and_the_reservation_is_released()
    {
        await using var p = await StartSeededAsync(settings: new Dictionary<string, string?>
        {
            ["Providers:Local:FailureRate"] = "1",
            ["Inference:RetryBaseDelayMs"] = "1",
            ["Inference:RetryMaxDelayMs"] = "2",
        });
        var before = await BudgetAsync(p);

        using var response = await InvokeAsync(p, """{"prompt":"Hi","model":"cheap"}""");

        Assert.True((int)response.StatusCode is 502 or 503, $"got {(int)response.StatusCode}");

        // Every breaker of the pool is open now: the next call is 503 and says when to come back (finn's Retry-After:
        // the soonest a breaker half-opens, 30 s ± 20 %), without a model being tried.
        using var next = await InvokeAsync(p, """{"prompt":"Hi again","model":"cheap"}""");
        Assert.Equal(HttpStatusCode.ServiceUnavailable, next.StatusCode);
        Assert.Equal("NO_HEALTHY_MODEL", (await next.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("error").GetString());
        var wait = next.Headers.RetryAfter?.Delta;
        Assert.True(wait >= TimeSpan.FromSeconds(20) && wait <= TimeSpan.FromSeconds(37), $"Retry-After {next.Headers.RetryAfter}");

        // A stream has sent its status line already: the error frame carries the wait.
        using var streamed = await InvokeAsync(p, """{"prompt":"Hi stream","model":"cheap","stream":true}""", sse: true);
        var errorData = (await streamed.Content.ReadAsStringAsync(TestContext.Current.CancellationToken)).Split("\n\n")
            .Single(f => f.Contains("event: error", StringComparison.Ordinal)).Split('\n').Single(l => l.StartsWith("data:", StringComparison.Ordinal))[5..];
        var frame = JsonDocument.Parse(errorData).RootElement;
        Assert.Equal("NO_HEALTHY_MODEL", frame.GetProperty("error").GetString());
        Assert.InRange(frame.GetProperty("retry_after").GetInt64(), 20, 37);

        var after = await BudgetAsync(p);
        Assert.Equal(before.GetProperty("committedMicro").GetInt64(), after.GetProperty("committedMicro").GetInt64());
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
        await AssertConservedAsync(p);
    }

    [Fact]
    public async Task When_finn_is_down_the_caller_gets_503_and_nothing_is_charged()
    {
        await using var p = await StartSeededAsync();
        await p.Finn.StopAsync(TestContext.Current.CancellationToken);
        var before = await BudgetAsync(p);

        using var response = await InvokeAsync(p, """{"prompt":"Hi","model":"cheap"}""");

        Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
        Assert.Equal("FINN_UNAVAILABLE", (await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("error").GetString());
        var after = await BudgetAsync(p);
        Assert.Equal(before.GetProperty("committedMicro").GetInt64(), after.GetProperty("committedMicro").GetInt64());
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Fifty_concurrent_invokes_keep_every_invariant(string engine)
    {
        await using var p = await StartSeededAsync(engine, new Dictionary<string, string?> { ["RateLimits:Free:CommunityPerMinute"] = "1000", ["RateLimits:Free:UserPerMinute"] = "1000" });

        var responses = await Task.WhenAll(Enumerable.Range(0, 50).Select(i => InvokeAsync(p, $$"""{"prompt":"Hi {{i}}","model":"cheap"}""")));

        Assert.All(responses, r => Assert.Equal(HttpStatusCode.OK, r.StatusCode));
        var total = 0L;
        foreach (var r in responses)
        {
            total += (await r.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("cost_micro").GetInt64();
            r.Dispose();
        }

        var budget = await BudgetAsync(p);
        Assert.Equal(0, budget.GetProperty("reservedMicro").GetInt64());
        Assert.True(budget.GetProperty("committedMicro").GetInt64() >= total);
        await AssertConservedAsync(p);
    }

    /// <summary>
    /// A client that leaves mid-stream is charged what it was sent, and a retry with its key replays how the call ended:
    /// 409 REQUEST_INCOMPLETE, which the retry's INVOKE_COMPLETE line logs as its status (it said 200 for every replay).
    /// </summary>
    [Fact]
    public async Task A_client_that_leaves_mid_stream_is_charged_exactly_what_was_streamed_and_nothing_stays_reserved()
    {
        var logs = new RecordingLoggerProvider();
        await using var p = await StartSeededAsync(settings: new Dictionary<string, string?> { ["Providers:Local:TokenDelayMs"] = "40" }, logs: logs);
        var before = await BudgetAsync(p);
        // "at length": the local provider answers at length, so the answer (256 tokens, 40 ms apart) outlasts the client.
        const string body = """{"prompt":"Write a story at length about dunes","model":"cheap","stream":true,"max_tokens":256,"idempotency_key":"leaves-mid-stream"}""";

        string traceId;
        using (var response = await SendStreamAsync(p, body))
        {
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(TestContext.Current.CancellationToken));
            traceId = (await ReadFramesAsync(reader, 3)).GetProperty("trace_id").GetString()!;
        } // the client goes away here, mid-stream

        var after = await WaitUntilNothingReservedAsync(p);
        var charged = after.GetProperty("committedMicro").GetInt64() - before.GetProperty("committedMicro").GetInt64();
        var usage = await WaitForUsageAsync(p, traceId);
        var pool = new Arrakis.Shared.Contracts.PoolCatalog().Pools["cheap"];
        Assert.Equal(usage.CostMicro, charged);
        Assert.Equal(Arrakis.Shared.Contracts.PoolCatalog.CostMicro(pool, usage.PromptTokens, usage.CompletionTokens), charged);
        Assert.InRange(usage.CompletionTokens, 3, 200); // at least the three deltas the client read, never the whole answer
        await AssertConservedAsync(p);

        // A retry with the same key is not run (and charged) again: it replays how the first one ended (C4).
        using var retry = await InvokeAsync(p, body, sse: true);
        Assert.Equal(HttpStatusCode.Conflict, retry.StatusCode);
        Assert.Equal("true", retry.Headers.GetValues("Idempotency-Replayed").Single());
        var problem = await retry.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken);
        Assert.Equal("REQUEST_INCOMPLETE", problem.GetProperty("error").GetString());
        Assert.Equal(charged, problem.GetProperty("cost_micro").GetInt64());
        Assert.Contains($"{usage.CompletionTokens} tokens, which were charged ({charged} micro-USD)", problem.GetProperty("detail").GetString(), StringComparison.Ordinal);
        Assert.Equal(usage.CompletionTokens, problem.GetProperty("usage").GetProperty("completion_tokens").GetInt64());
        Assert.False(string.IsNullOrEmpty(problem.GetProperty("content").GetString()));
        Assert.Equal(after.GetProperty("committedMicro").GetInt64(), (await BudgetAsync(p)).GetProperty("committedMicro").GetInt64());

        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (!logs.WithEvent("INVOKE_COMPLETE").Any(l => (string)l.Properties["Outcome"]! == "replayed") && waited.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(50, TestContext.Current.CancellationToken);
        }

        var replayed = Assert.Single(logs.WithEvent("INVOKE_COMPLETE"), l => (string)l.Properties["Outcome"]! == "replayed");
        Assert.Equal(409, (int)replayed.Properties["Status"]!);
    }

    /// <summary>
    /// A retry with the key of a call that is still running gets 409 REQUEST_IN_PROGRESS however long the call runs: the
    /// running call renews its key, so the retry cannot take it over as if freeside had died, and the key charges once.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_retry_while_a_call_outlives_the_key_lease_gets_409_and_the_key_charges_once(string engine)
    {
        await using var p = await StartSeededAsync(engine, new Dictionary<string, string?>
        {
            // The shortest lease allowed; the call runs 6 s longer, so the retry at 11.5 s still finds it running on a busy machine.
            ["Providers:Local:LatencyMs"] = "16000",
            ["Idempotency:LeaseTimeout"] = "00:00:10",
        });
        const string body = """{"prompt":"Long running","model":"cheap","idempotency_key":"outlives-the-lease"}""";
        var before = await BudgetAsync(p);

        var first = InvokeAsync(p, body);
        await Task.Delay(TimeSpan.FromSeconds(11.5), TestContext.Current.CancellationToken);
        using (var retry = await InvokeAsync(p, body))
        {
            Assert.Equal(HttpStatusCode.Conflict, retry.StatusCode);
            Assert.Equal("REQUEST_IN_PROGRESS", (await retry.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("error").GetString());
        }

        using var done = await first;
        Assert.Equal(HttpStatusCode.OK, done.StatusCode);
        var cost = (await done.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("cost_micro").GetInt64();
        await using (var c = await p.Freeside.Services.GetRequiredService<Database>().OpenAsync(TestContext.Current.CancellationToken))
        {
            Assert.Equal(1, await Dapper.SqlMapper.ExecuteScalarAsync<long>(c, "SELECT COUNT(*) FROM usage_records WHERE idempotency_key = 'outlives-the-lease'"));
        }

        await AssertChargedAndNothingHeldAsync(p, before, cost);
    }

    /// <summary>
    /// A call that runs past the reservation TTL keeps its hold (freeside renews it while finn works) and is charged its
    /// metered cost; without the renewal the reaper would expire the hold and the finished call would never post.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_call_longer_than_the_reservation_ttl_keeps_its_hold_and_is_charged_its_metered_cost(string engine)
    {
        await using var p = await StartSeededAsync(engine, ShortTtlSettings("7500"));
        var before = await BudgetAsync(p);

        using var response = await InvokeAsync(p, """{"prompt":"Summarize the dunes","model":"cheap","max_tokens":32}""");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var cost = (await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("cost_micro").GetInt64();

        await AssertChargedAndNothingHeldAsync(p, before, cost);
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_stream_longer_than_the_reservation_ttl_keeps_its_hold_and_is_charged_its_metered_cost(string engine)
    {
        await using var p = await StartSeededAsync(engine, ShortTtlSettings("4500"));
        var before = await BudgetAsync(p);

        using var response = await SendStreamAsync(p, """{"prompt":"Summarize the dunes","model":"cheap","stream":true,"max_tokens":32}""");
        var frames = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        var done = frames.Split("\n\n").Single(f => f.Contains("event: done", StringComparison.Ordinal));
        var cost = JsonDocument.Parse(done[(done.IndexOf("data:", StringComparison.Ordinal) + 5)..]).RootElement.GetProperty("cost_micro").GetInt64();

        await AssertChargedAndNothingHeldAsync(p, before, cost);
    }

    /// <summary>
    /// finn takes <paramref name="latencyMs"/> before its first token, well past a 3 s reservation TTL that a 100 ms reaper
    /// enforces. The lease renews every third of the TTL, so a stall of the whole process longer than two thirds of it lets
    /// the reaper take a live hold: in the parallel CI suite that happened once with a 1 s TTL (a ~0.7 s stall) and once
    /// with 2 s (the 5 s call took 8 s). With 3 s, renewals every second tolerate a 2 s stall. The production TTL is 300 s.
    /// </summary>
    static Dictionary<string, string?> ShortTtlSettings(string latencyMs) => new()
    {
        ["Providers:Local:LatencyMs"] = latencyMs,
        ["Providers:Local:TokenDelayMs"] = "20",
        ["Ledger:ReservationTtl"] = "00:00:03",
        ["Ledger:ReaperInterval"] = "00:00:00.100",
    };

    static async Task AssertChargedAndNothingHeldAsync(Platform p, JsonElement before, long cost)
    {
        var after = await BudgetAsync(p);
        Assert.True(cost > 0);
        Assert.Equal(cost, after.GetProperty("committedMicro").GetInt64() - before.GetProperty("committedMicro").GetInt64());
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
        Assert.Equal(0, await PendingReservationsAsync(p));
        await AssertConservedAsync(p);
    }

    /// <summary>finn dies mid-answer (its connections reset and it stays unreachable): the caller gets a 5xx, nothing is charged.</summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Killing_finn_mid_request_charges_nothing_and_leaves_no_reservation_after_the_reaper_ttl(string engine)
    {
        await using var p = await StartSeededAsync(engine, ReaperSettings());
        await using var finn = FinnBehindProxy(p);
        var before = await BudgetAsync(p);

        var call = InvokeAsync(p, """{"prompt":"Write a long story about dunes","model":"cheap","max_tokens":256}""");
        await WaitForPendingReservationAsync(p);
        finn.Cut(); // finn is gone mid-request

        using var response = await call;
        Assert.True((int)response.StatusCode is 502 or 503, $"got {(int)response.StatusCode}");
        var error = (await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("error").GetString();
        Assert.True(error is "UPSTREAM_FAILED" or "FINN_UNAVAILABLE", error);

        await Task.Delay(TimeSpan.FromSeconds(3), TestContext.Current.CancellationToken); // past the 2 s TTL, several reaper ticks
        var after = await BudgetAsync(p);
        Assert.Equal(before.GetProperty("committedMicro").GetInt64(), after.GetProperty("committedMicro").GetInt64());
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
        Assert.Equal(0, await PendingReservationsAsync(p));
        await AssertConservedAsync(p);
    }

    /// <summary>finn dies mid-stream: the client gets an error frame and is charged what finn had metered and sent, no more.</summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Killing_finn_mid_stream_charges_only_what_was_metered_and_leaves_no_reservation_after_the_reaper_ttl(string engine)
    {
        await using var p = await StartSeededAsync(engine, ReaperSettings());
        await using var finn = FinnBehindProxy(p);
        var before = await BudgetAsync(p);

        using var response = await SendStreamAsync(p, """{"prompt":"Write a long story about dunes","model":"cheap","stream":true,"max_tokens":256}""");
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(TestContext.Current.CancellationToken));
        var start = await ReadFramesAsync(reader, 3);
        finn.Cut(); // finn is gone mid-stream
        var rest = await reader.ReadToEndAsync(TestContext.Current.CancellationToken);

        Assert.Contains("event: error", rest, StringComparison.Ordinal);
        Assert.DoesNotContain("event: done", rest, StringComparison.Ordinal);
        var deltas = 3 + rest.Split('\n').Count(l => l.StartsWith("event: delta", StringComparison.Ordinal));
        var traceId = start.GetProperty("trace_id").GetString()!;
        await WaitForUsageAsync(p, traceId);
        await Task.Delay(TimeSpan.FromSeconds(3), TestContext.Current.CancellationToken); // past the 2 s TTL, several reaper ticks
        await AssertChargedTheDeltasAndNothingHeldAsync(p, before, traceId, deltas);
    }

    /// <summary>
    /// A stream that stopped early was charged exactly its <paramref name="deltas"/> (the local provider streams one token
    /// per delta) at the pool's price, its usage record says so, nothing stays reserved, and C1-C5 hold.
    /// </summary>
    static async Task AssertChargedTheDeltasAndNothingHeldAsync(Platform p, JsonElement before, string traceId, int deltas)
    {
        var usage = await WaitForUsageAsync(p, traceId);
        var after = await BudgetAsync(p);
        var charged = after.GetProperty("committedMicro").GetInt64() - before.GetProperty("committedMicro").GetInt64();
        var pool = new Arrakis.Shared.Contracts.PoolCatalog().Pools["cheap"];
        Assert.Equal(usage.CostMicro, charged);
        Assert.Equal(Arrakis.Shared.Contracts.PoolCatalog.CostMicro(pool, usage.PromptTokens, usage.CompletionTokens), charged);
        Assert.Equal(deltas, usage.CompletionTokens);
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
        Assert.Equal(0, await PendingReservationsAsync(p));
        await AssertConservedAsync(p);
    }

    /// <summary>
    /// finn hangs mid-stream (its connection stays open but nothing more arrives: a frozen process, a black-holed
    /// network). freeside gives up after finn has been silent for the idle timeout (finn writes a keepalive every 15 s
    /// while it works, so silence means it is gone): the client gets an error frame, is charged exactly the deltas it was
    /// sent, and nothing stays reserved. Before, freeside waited for finn for as long as the client did, renewing the hold.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_finn_that_hangs_mid_stream_ends_the_stream_after_the_idle_timeout_and_charges_what_was_streamed(string engine)
    {
        var settings = ReaperSettings();
        settings["Services:FinnStreamIdleTimeout"] = "00:00:02";
        await using var p = await StartSeededAsync(engine, settings);
        await using var finn = FinnBehindProxy(p);
        var before = await BudgetAsync(p);

        using var response = await SendStreamAsync(p, """{"prompt":"Write a long story about dunes","model":"cheap","stream":true,"max_tokens":256}""");
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(TestContext.Current.CancellationToken));
        var start = await ReadFramesAsync(reader, 3);
        finn.Freeze(); // finn hangs mid-stream
        using var patience = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        patience.CancelAfter(TimeSpan.FromSeconds(10));
        var rest = new StringBuilder();
        try
        {
            while (await reader.ReadLineAsync(patience.Token) is { } line)
            {
                rest.Append(line).Append('\n');
            }
        }
        catch (OperationCanceledException) when (!TestContext.Current.CancellationToken.IsCancellationRequested)
        {
        }

        Assert.False(patience.IsCancellationRequested, $"the stream was still open 10 s after finn hung; pending reservations: {await PendingReservationsAsync(p)}");
        Assert.Contains("event: error", rest.ToString(), StringComparison.Ordinal);
        Assert.DoesNotContain("event: done", rest.ToString(), StringComparison.Ordinal);
        var deltas = 3 + rest.ToString().Split('\n').Count(l => l.StartsWith("event: delta", StringComparison.Ordinal));
        await AssertChargedTheDeltasAndNothingHeldAsync(p, before, start.GetProperty("trace_id").GetString()!, deltas);
    }

    /// <summary>
    /// A client sends a stream request, reads a few bytes (its headers and start frame) and then stops reading, its
    /// connection left open. Once the socket buffers are full, freeside's write blocks; after Invoke:StreamWriteTimeout
    /// the stream ends as a disconnect (499): the client is charged what was written to it (less than the whole answer),
    /// nothing stays reserved, C1-C5 hold, and a retry replays REQUEST_INCOMPLETE. Meanwhile another call of the same
    /// community runs to its done frame. Before, the blocked write waited on Kestrel's minimum data rate (a second per
    /// 240 bytes already sent: hours here), the call's hold and key renewed and finn's call open all along.
    /// </summary>
    [Fact]
    public async Task A_client_that_stops_reading_a_stream_is_cut_off_after_the_write_timeout_and_charged_what_was_written()
    {
        var ct = TestContext.Current.CancellationToken;
        var logs = new RecordingLoggerProvider();
        await using var p = await StartSeededAsync(settings: new Dictionary<string, string?> { ["Invoke:StreamWriteTimeout"] = "00:00:02" }, logs: logs);
        var before = await BudgetAsync(p);
        // Every sentence of the essay carries the prompt's topic, one 40,000-letter word: megabytes, more than the buffers hold.
        var prompt = "Write an essay about " + new string('d', 40_000);
        var whole = Math.Min(8192, Arrakis.Finn.Inference.Providers.Tokenizer.Count(
            Arrakis.Finn.Inference.Providers.LocalProvider.Compose([new Arrakis.Shared.Contracts.ChatMessage("user", prompt)])));
        var body = JsonSerializer.Serialize(new { prompt, model = "cheap", stream = true, max_tokens = 8192, idempotency_key = "stops-reading" });

        var uri = new Uri(p.FreesideUrl);
        using var stalled = new System.Net.Sockets.TcpClient { ReceiveBufferSize = 4096 };
        await stalled.ConnectAsync(uri.Host, uri.Port, ct);
        var socket = stalled.GetStream();
        var sent = System.Diagnostics.Stopwatch.StartNew();
        await socket.WriteAsync(Encoding.UTF8.GetBytes(
            $"POST {Arrakis.Freeside.Invoke.InvokeApi.Path} HTTP/1.1\r\nHost: {uri.Authority}\r\nAuthorization: Bearer {UserToken(p)}\r\nAccept: text/event-stream\r\n"
            + $"Content-Type: application/json\r\nContent-Length: {Encoding.UTF8.GetByteCount(body)}\r\n\r\n{body}"), ct);
        var head = new StringBuilder();
        var one = new byte[1];
        while (System.Text.RegularExpressions.Regex.Match(head.ToString(), "\"trace_id\":\"([0-9a-f]+)\"") is not { Success: true } && head.Length < 4096)
        {
            Assert.Equal(1, await socket.ReadAsync(one, ct));
            head.Append((char)one[0]);
        }

        Assert.StartsWith("HTTP/1.1 200", head.ToString(), StringComparison.Ordinal);
        var traceId = System.Text.RegularExpressions.Regex.Match(head.ToString(), "\"trace_id\":\"([0-9a-f]+)\"").Groups[1].Value;
        Assert.NotEmpty(traceId); // from here on the client reads nothing

        // The stalled call runs (its write blocked), and another call of the community is served meanwhile.
        string other;
        using (var response = await SendStreamAsync(p, """{"prompt":"Say hi","model":"cheap","stream":true}"""))
        {
            other = await response.Content.ReadAsStringAsync(ct);
        }

        Assert.Contains("event: done", other, StringComparison.Ordinal);
        Assert.DoesNotContain(logs.WithEvent("INVOKE_COMPLETE"), l => (string)l.Properties["TraceId"]! == traceId); // still held then
        var otherCost = JsonDocument.Parse(other.Split('\n').Last(l => l.StartsWith("data:", StringComparison.Ordinal))[5..]).RootElement.GetProperty("cost_micro").GetInt64();

        RecordedLog? complete = null;
        while (complete is null)
        {
            Assert.True(sent.Elapsed < TimeSpan.FromSeconds(30), $"the stalled stream still held its call {sent.Elapsed.TotalSeconds:0} s on; pending reservations: {await PendingReservationsAsync(p)}");
            await Task.Delay(100, ct);
            complete = logs.WithEvent("INVOKE_COMPLETE").FirstOrDefault(l => (string)l.Properties["TraceId"]! == traceId);
        }

        Assert.Equal((499, "client_disconnected"), ((int)complete.Properties["Status"]!, (string)complete.Properties["Outcome"]!));
        Assert.True((long)complete.Properties["DurationMs"]! >= 2000, "the call ended before any write had been blocked for the write timeout");
        var usage = await WaitForUsageAsync(p, traceId);
        var after = await WaitUntilNothingReservedAsync(p);
        var pool = new Arrakis.Shared.Contracts.PoolCatalog().Pools["cheap"];
        Assert.Equal(Arrakis.Shared.Contracts.PoolCatalog.CostMicro(pool, usage.PromptTokens, usage.CompletionTokens), usage.CostMicro);
        Assert.Equal(usage.CostMicro, (long)complete.Properties["CostMicro"]!);
        Assert.Equal(usage.CostMicro + otherCost, after.GetProperty("committedMicro").GetInt64() - before.GetProperty("committedMicro").GetInt64());
        Assert.InRange(usage.CompletionTokens, 1, whole - 1); // what was written before the write blocked, never the whole answer
        Assert.Equal(0, await PendingReservationsAsync(p));
        await AssertConservedAsync(p);

        using var retry = await InvokeAsync(p, body, sse: true);
        Assert.Equal(HttpStatusCode.Conflict, retry.StatusCode);
        var problem = await retry.Content.ReadFromJsonAsync<JsonElement>(ct);
        Assert.Equal(("REQUEST_INCOMPLETE", usage.CostMicro), (problem.GetProperty("error").GetString(), problem.GetProperty("cost_micro").GetInt64()));
    }

    /// <summary>
    /// The finn call throws something it was never meant to (a defect; here a handler on freeside's finn client): the
    /// call is failed like an upstream error. JSON: 500 INTERNAL_ERROR, the hold released and the key freed at once, so the
    /// same key runs once the fault is gone. SSE: the deltas already delivered are charged, an error frame ends the stream,
    /// and nothing stays reserved. Before, the exception escaped: the hold stayed until the reaper, the JSON key was stuck
    /// in progress until its lease, and the stream was cut off without an error frame.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task An_unexpected_error_in_the_finn_call_fails_the_call_and_releases_its_hold_at_once(string engine)
    {
        var fault = new FaultyFinnHandler();
        await using var p = await Platform.StartAsync(engine, null, (service, b) =>
        {
            if (service == "freeside")
            {
                b.Services.AddHttpClient(Arrakis.Freeside.Identity.IdentitySetup.FinnClient).AddHttpMessageHandler(() => fault.Handler());
            }
        });
        await Seeder.For(p.Freeside.Services.GetRequiredService<Database>()).SeedAsync(TestContext.Current.CancellationToken);
        var before = await BudgetAsync(p);

        fault.ThrowOnSend = true;
        const string body = """{"prompt":"Say hello in exactly 3 words","model":"cheap","idempotency_key":"unexpected-1"}""";
        using (var failed = await InvokeAsync(p, body))
        {
            var problem = await failed.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken);
            Assert.True(failed.StatusCode == HttpStatusCode.InternalServerError, $"{(int)failed.StatusCode} {problem}");
            Assert.Equal("INTERNAL_ERROR", problem.GetProperty("error").GetString());
        }

        Assert.Equal(0, await PendingReservationsAsync(p));
        fault.ThrowOnSend = false;
        using (var retried = await InvokeAsync(p, body))
        {
            Assert.Equal(HttpStatusCode.OK, retried.StatusCode); // the key was freed, not left in progress
        }

        var afterJson = await BudgetAsync(p);
        fault.BreakStreamAfterBytes = 600; // the start frame and a few deltas get through, then reading finn's stream throws
        using var response = await SendStreamAsync(p, """{"prompt":"Write a long story about dunes","model":"cheap","stream":true,"max_tokens":256}""");
        var frames = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        Assert.Contains("event: error", frames, StringComparison.Ordinal);
        Assert.Contains("INTERNAL_ERROR", frames, StringComparison.Ordinal);
        Assert.DoesNotContain("event: done", frames, StringComparison.Ordinal);
        var deltas = frames.Split('\n').Count(l => l.StartsWith("event: delta", StringComparison.Ordinal));
        var traceId = JsonDocument.Parse(frames.Split('\n').First(l => l.StartsWith("data:", StringComparison.Ordinal))[5..]).RootElement.GetProperty("trace_id").GetString()!;
        Assert.True(deltas > 0, frames);
        Assert.True(afterJson.GetProperty("committedMicro").GetInt64() > before.GetProperty("committedMicro").GetInt64());
        await AssertChargedTheDeltasAndNothingHeldAsync(p, afterJson, traceId, deltas);
    }

    /// <summary>Makes freeside's finn client throw an exception no part of the call expects, on send or mid-stream.</summary>
    sealed class FaultyFinnHandler
    {
        public volatile bool ThrowOnSend;

        public int BreakStreamAfterBytes;

        public DelegatingHandler Handler() => new Faulty(this);

        sealed class Faulty(FaultyFinnHandler owner) : DelegatingHandler
        {
            protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken ct)
            {
                if (owner.ThrowOnSend)
                {
                    throw new InvalidOperationException("injected: an error no part of the finn call expects");
                }

                var response = await base.SendAsync(request, ct);
                if (owner.BreakStreamAfterBytes > 0 && response.Content.Headers.ContentType?.MediaType == "text/event-stream")
                {
                    var inner = await response.Content.ReadAsStreamAsync(ct);
                    var content = new StreamContent(new Breaking(inner, owner.BreakStreamAfterBytes));
                    foreach (var h in response.Content.Headers)
                    {
                        content.Headers.TryAddWithoutValidation(h.Key, h.Value);
                    }

                    response.Content = content;
                }

                return response;
            }
        }

        sealed class Breaking(Stream inner, int limit) : Stream
        {
            int _read;

            public override bool CanRead => true;

            public override bool CanSeek => false;

            public override bool CanWrite => false;

            public override long Length => throw new NotSupportedException();

            public override long Position { get => _read; set => throw new NotSupportedException(); }

            public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default)
            {
                if (_read >= limit)
                {
                    throw new InvalidOperationException("injected: an error no part of the finn stream expects");
                }

                var n = await inner.ReadAsync(buffer[..Math.Min(buffer.Length, limit - _read)], ct);
                _read += n;
                return n;
            }

            public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

            public override void Flush()
            {
            }

            public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

            public override void SetLength(long value) => throw new NotSupportedException();

            public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

            protected override void Dispose(bool disposing)
            {
                if (disposing)
                {
                    inner.Dispose();
                }

                base.Dispose(disposing);
            }
        }
    }

    /// <summary>
    /// DESIGN §8: freeside logs INVOKE_COMPLETE for every invoke, failed ones included (the CloudWatch filters and the
    /// operator count calls by it). A call refused before it runs (an invalid max_tokens' 400, the budget's 402) logs its
    /// line too: its status, community and pool, a numeric duration and nothing charged; so does one whose reservation
    /// threw (the 500 the error handler answers). Before, only calls that held a reservation logged one, so a community
    /// refused all day by its budget left no INVOKE_COMPLETE line at all.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task An_invoke_refused_before_it_runs_still_logs_its_invoke_complete_line(string engine)
    {
        var logs = new RecordingLoggerProvider();
        await using var p = await StartSeededAsync(engine, RaisedRateLimits(), logs);
        var ct = TestContext.Current.CancellationToken;
        using (var ok = await InvokeAsync(p, """{"prompt":"Say hi","model":"cheap"}"""))
        {
            Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
        }

        using (var tooLong = await InvokeAsync(p, """{"prompt":"Say hi","model":"cheap","max_tokens":1000000}"""))
        {
            Assert.Equal(HttpStatusCode.BadRequest, tooLong.StatusCode);
        }

        // The reservation's write fails: the error handler answers 500, and the line says so.
        var ledger = p.Freeside.Services.GetRequiredService<Arrakis.Freeside.Ledger.Ledger>();
        ledger.FaultPoint = "reserve.after-insert";
        using (var failed = await InvokeAsync(p, """{"prompt":"Say hi","model":"cheap"}"""))
        {
            Assert.Equal(HttpStatusCode.InternalServerError, failed.StatusCode);
        }

        ledger.FaultPoint = null;
        await using (var c = await p.Freeside.Services.GetRequiredService<Database>().OpenAsync(ct))
        {
            await Dapper.SqlMapper.ExecuteAsync(c, "UPDATE budget_months SET limit_micro = committed_micro + reserved_micro WHERE community_id = @community", new { community = Community });
        }

        using (var refused = await InvokeAsync(p, """{"prompt":"Say hi","model":"cheap"}"""))
        {
            Assert.Equal(HttpStatusCode.PaymentRequired, refused.StatusCode);
        }

        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (logs.WithEvent("INVOKE_COMPLETE").Count() < 4 && waited.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(50, ct);
        }

        var lines = logs.WithEvent("INVOKE_COMPLETE").ToList();
        Assert.Equal([200, 400, 500, 402], lines.Select(l => (int)l.Properties["Status"]!));
        Assert.Equal(["ok", "rejected", "error", "rejected"], lines.Select(l => (string)l.Properties["Outcome"]!));
        var refusals = lines.Where(l => (string)l.Properties["Outcome"]! == "rejected").Prepend(lines[0]).ToList();
        Assert.All(refusals, l => Assert.Equal(Community, l.Properties["CommunityId"]));
        Assert.All(refusals, l => Assert.Equal("cheap", l.Properties["Pool"]));
        Assert.All(lines, l => Assert.IsType<long>(l.Properties["DurationMs"]));
        Assert.All(lines.Skip(1), l => Assert.Equal(0L, l.Properties["CostMicro"]));
        Assert.All(lines, l => Assert.False(string.IsNullOrEmpty((string?)l.Properties["TraceId"])));
    }

    /// <summary>
    /// DESIGN §8: every invoke logs INVOKE_COMPLETE, those the token check refuses included (a missing token, a badly
    /// signed one, a replayed one): status 401, outcome rejected (left out of the latency alarm's filter), and the 401's
    /// JSON body and WWW-Authenticate as before. Before, the check answered before the invoke handler ran, so no line was
    /// logged. A 401 on another route is not an invoke and logs none.
    /// </summary>
    [Fact]
    public async Task An_invoke_refused_by_the_token_check_logs_its_invoke_complete_line_and_no_other_route_does()
    {
        var logs = new RecordingLoggerProvider();
        await using var p = await StartSeededAsync(settings: RaisedRateLimits(), logs: logs);
        var ct = TestContext.Current.CancellationToken;

        async Task<HttpResponseMessage> SendAsync(HttpMethod method, string path, string? token, bool sse = false)
        {
            using var request = new HttpRequestMessage(method, p.FreesideUrl + path);
            if (method == HttpMethod.Post)
            {
                request.Content = new StringContent("""{"prompt":"Say hi","model":"cheap"}""", Encoding.UTF8, "application/json");
            }

            if (token is not null)
            {
                request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            }

            if (sse)
            {
                request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("text/event-stream"));
            }

            return await Http.SendAsync(request, ct);
        }

        async Task AssertUnauthorizedAsync(HttpResponseMessage response)
        {
            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
            Assert.Equal("Bearer error=\"invalid_token\"", response.Headers.WwwAuthenticate.ToString());
            Assert.Equal("UNAUTHORIZED", (await response.Content.ReadFromJsonAsync<JsonElement>(ct)).GetProperty("error").GetString());
        }

        using (var budget = await SendAsync(HttpMethod.Get, $"/api/v1/communities/{Community}/budget", null))
        {
            await AssertUnauthorizedAsync(budget); // another route's 401: no INVOKE_COMPLETE
        }

        using (var missing = await SendAsync(HttpMethod.Post, "/api/agents/invoke", null, sse: true))
        {
            await AssertUnauthorizedAsync(missing);
        }

        var token = UserToken(p);
        using (var badlySigned = await SendAsync(HttpMethod.Post, "/api/agents/invoke", token[..^4] + (token[^4..] == "AAAA" ? "BBBB" : "AAAA")))
        {
            await AssertUnauthorizedAsync(badlySigned);
        }

        using (var ok = await SendAsync(HttpMethod.Post, "/api/agents/invoke", token))
        {
            Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
        }

        using (var replayed = await SendAsync(HttpMethod.Post, "/api/agents/invoke", token))
        {
            await AssertUnauthorizedAsync(replayed);
        }

        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (logs.WithEvent("INVOKE_COMPLETE").Count() < 4 && waited.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(50, ct);
        }

        var lines = logs.WithEvent("INVOKE_COMPLETE").ToList();
        Assert.Equal([401, 401, 200, 401], lines.Select(l => (int)l.Properties["Status"]!));
        Assert.Equal(["rejected", "rejected", "ok", "rejected"], lines.Select(l => (string)l.Properties["Outcome"]!));
        Assert.Equal([true, false, false, false], lines.Select(l => (bool)l.Properties["Stream"]!));
        Assert.All(lines, l => Assert.IsType<long>(l.Properties["DurationMs"]));
        Assert.All(lines, l => Assert.False(string.IsNullOrEmpty((string?)l.Properties["TraceId"])));
        Assert.All(lines.Where(l => (int)l.Properties["Status"]! == 401), l => Assert.Equal(0L, l.Properties["CostMicro"]));
    }

    /// <summary>
    /// A body that fails while it is read logs its INVOKE_COMPLETE line too: one over Kestrel's MaxRequestBodySize is
    /// answered 413 REQUEST_TOO_LARGE and logged 413 (outcome rejected), one whose client leaves mid-body is logged 499
    /// (client_disconnected, as a client that leaves later is). Before, the body was read outside the handler's logging,
    /// so neither logged a line.
    /// </summary>
    [Fact]
    public async Task An_invoke_whose_body_cannot_be_read_logs_its_invoke_complete_line()
    {
        var logs = new RecordingLoggerProvider();
        await using var p = await StartSeededAsync(settings: RaisedRateLimits(), logs: logs);
        var ct = TestContext.Current.CancellationToken;
        var uri = new Uri(p.FreesideUrl);
        string Head(long length) =>
            $"POST {Arrakis.Freeside.Invoke.InvokeApi.Path} HTTP/1.1\r\nHost: {uri.Authority}\r\nAuthorization: Bearer {UserToken(p)}\r\n"
            + $"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{\"prompt\":\"";

        using (var tooLarge = new System.Net.Sockets.TcpClient())
        {
            await tooLarge.ConnectAsync(uri.Host, uri.Port, ct);
            var socket = tooLarge.GetStream();
            await socket.WriteAsync(Encoding.UTF8.GetBytes(Head(Arrakis.Shared.Hosting.ServiceDefaults.MaxRequestBodyBytes + 1)), ct);
            var answer = await new StreamReader(socket).ReadToEndAsync(ct);
            Assert.StartsWith("HTTP/1.1 413", answer, StringComparison.Ordinal);
            Assert.Contains("\"error\":\"REQUEST_TOO_LARGE\"", answer, StringComparison.Ordinal);
        }

        var first = await WaitForLogAsync(logs, "INVOKE_COMPLETE");
        Assert.Equal((413, "rejected"), ((int)first.Properties["Status"]!, (string)first.Properties["Outcome"]!));

        // The client goes away a few bytes into the 1000 it promised: closing its connection (FIN), or resetting it (RST).
        foreach (var reset in new[] { false, true })
        {
            using var leaves = new System.Net.Sockets.TcpClient();
            await leaves.ConnectAsync(uri.Host, uri.Port, ct);
            await leaves.GetStream().WriteAsync(Encoding.UTF8.GetBytes(Head(1000)), ct);
            await Task.Delay(500, ct); // the handler is reading the body
            if (reset)
            {
                leaves.Client.LingerState = new System.Net.Sockets.LingerOption(true, 0);
            }

            leaves.Close();
        }

        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (logs.WithEvent("INVOKE_COMPLETE").Count() < 3 && waited.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(50, ct);
        }

        var lines = logs.WithEvent("INVOKE_COMPLETE").ToList();
        Assert.Equal(3, lines.Count);
        Assert.All(lines.Skip(1), l => Assert.Equal((499, "client_disconnected"), ((int)l.Properties["Status"]!, (string)l.Properties["Outcome"]!)));
        Assert.All(lines, l => Assert.IsType<long>(l.Properties["DurationMs"]));
        Assert.All(lines, l => Assert.Equal(0L, l.Properties["CostMicro"]));
        Assert.Equal(0, await PendingReservationsAsync(p));
    }

    /// <summary>
    /// A chunked body whose client goes away before its last chunk logs 499 (client_disconnected), as one that ends
    /// before its Content-Length does. Kestrel aborts such a request, but the abort reaches RequestAborted later, on the
    /// thread pool: here it never does (the request's lifetime token is one that is not cancelled), as it sometimes had
    /// not when the body read threw, and the line said 400 rejected. A malformed chunk is still a 400 the client reads.
    /// </summary>
    [Fact]
    public async Task An_invoke_whose_chunked_body_ends_early_logs_499_even_before_the_abort_arrives()
    {
        var logs = new RecordingLoggerProvider();
        await using var p = await Platform.StartAsync("sqlite", RaisedRateLimits(), (service, b) =>
        {
            if (service == "freeside")
            {
                b.Logging.AddProvider(logs);
                b.Services.AddTransient<Microsoft.AspNetCore.Hosting.IStartupFilter, AbortArrivesLate>();
            }
        });
        await Seeder.For(p.Freeside.Services.GetRequiredService<Database>()).SeedAsync(TestContext.Current.CancellationToken);
        var ct = TestContext.Current.CancellationToken;
        var uri = new Uri(p.FreesideUrl);
        string Head() =>
            $"POST {Arrakis.Freeside.Invoke.InvokeApi.Path} HTTP/1.1\r\nHost: {uri.Authority}\r\nAuthorization: Bearer {UserToken(p)}\r\n"
            + "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";

        // The client goes away after one chunk: closing its connection (FIN), or resetting it (RST).
        foreach (var reset in new[] { false, true })
        {
            using var leaves = new System.Net.Sockets.TcpClient();
            await leaves.ConnectAsync(uri.Host, uri.Port, ct);
            await leaves.GetStream().WriteAsync(Encoding.UTF8.GetBytes(Head() + "b\r\n{\"prompt\":\"\r\n"), ct);
            await Task.Delay(500, ct); // the handler is reading the body
            if (reset)
            {
                leaves.Client.LingerState = new System.Net.Sockets.LingerOption(true, 0);
            }

            leaves.Close();
            await WaitForLinesAsync(logs, reset ? 2 : 1);
        }

        using (var malformed = new System.Net.Sockets.TcpClient())
        {
            await malformed.ConnectAsync(uri.Host, uri.Port, ct);
            var socket = malformed.GetStream();
            await socket.WriteAsync(Encoding.UTF8.GetBytes(Head() + "zz\r\n{\"prompt\":\"\r\n"), ct);
            var answer = new byte[4096];
            var read = await socket.ReadAsync(answer, ct);
            Assert.StartsWith("HTTP/1.1 400", Encoding.UTF8.GetString(answer, 0, read), StringComparison.Ordinal);
        }

        var lines = await WaitForLinesAsync(logs, 3);
        Assert.Equal([(499, "client_disconnected"), (499, "client_disconnected"), (400, "rejected")],
            lines.Select(l => ((int)l.Properties["Status"]!, (string)l.Properties["Outcome"]!)));
        Assert.All(lines, l => Assert.IsType<long>(l.Properties["DurationMs"]));
        Assert.Equal(0, await PendingReservationsAsync(p));
    }

    /// <summary>Kestrel's abort of a request arrives late: its RequestAborted is a token that is never cancelled.</summary>
    sealed class AbortArrivesLate : Microsoft.AspNetCore.Hosting.IStartupFilter
    {
        public Action<Microsoft.AspNetCore.Builder.IApplicationBuilder> Configure(Action<Microsoft.AspNetCore.Builder.IApplicationBuilder> next) => app =>
        {
            Microsoft.AspNetCore.Builder.UseExtensions.Use(app, (http, nextMiddleware) =>
            {
                http.Features.Set<Microsoft.AspNetCore.Http.Features.IHttpRequestLifetimeFeature>(new Microsoft.AspNetCore.Http.Features.HttpRequestLifetimeFeature());
                return nextMiddleware(http);
            });
            next(app);
        };
    }

    /// <summary>
    /// A body that arrives slower than Kestrel's minimum data rate is answered 408 REQUEST_TIMEOUT (JSON), and its
    /// INVOKE_COMPLETE line says 408 rejected. Before, the error handler answered the client, who was still there,
    /// 400 INVALID_REQUEST (field body), and the line said 499 client_disconnected (the body had not reached its length).
    /// </summary>
    [Fact]
    public async Task An_invoke_whose_body_is_too_slow_is_answered_and_logged_408()
    {
        var logs = new RecordingLoggerProvider();
        await using var p = await Platform.StartAsync("sqlite", RaisedRateLimits(), (service, b) =>
        {
            if (service == "freeside")
            {
                b.Logging.AddProvider(logs);
                Microsoft.AspNetCore.Hosting.WebHostBuilderKestrelExtensions.ConfigureKestrel(b.WebHost, k => k.Limits.MinRequestBodyDataRate = new Microsoft.AspNetCore.Server.Kestrel.Core.MinDataRate(240, TimeSpan.FromSeconds(2)));
            }
        });
        await Seeder.For(p.Freeside.Services.GetRequiredService<Database>()).SeedAsync(TestContext.Current.CancellationToken);
        var ct = TestContext.Current.CancellationToken;
        var uri = new Uri(p.FreesideUrl);
        using var slow = new System.Net.Sockets.TcpClient();
        await slow.ConnectAsync(uri.Host, uri.Port, ct);
        var socket = slow.GetStream();
        await socket.WriteAsync(Encoding.UTF8.GetBytes(
            $"POST {Arrakis.Freeside.Invoke.InvokeApi.Path} HTTP/1.1\r\nHost: {uri.Authority}\r\nAuthorization: Bearer {UserToken(p)}\r\n"
            + "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"prompt\":\""), ct);
        var answer = new StreamReader(socket).ReadToEndAsync(ct);
        for (var i = 0; i < 20 && !answer.IsCompleted; i++)
        {
            await Task.Delay(500, ct);
            if (!answer.IsCompleted)
            {
                await socket.WriteAsync("x"u8.ToArray(), ct); // 2 bytes a second, far under 240
            }
        }

        var text = await answer;
        Assert.StartsWith("HTTP/1.1 408", text, StringComparison.Ordinal);
        Assert.Contains("\"error\":\"REQUEST_TIMEOUT\"", text, StringComparison.Ordinal);
        var line = Assert.Single(await WaitForLinesAsync(logs, 1));
        Assert.Equal((408, "rejected"), ((int)line.Properties["Status"]!, (string)line.Properties["Outcome"]!));
        Assert.Equal(0L, line.Properties["CostMicro"]);
    }

    /// <summary>The INVOKE_COMPLETE lines once there are at least <paramref name="count"/> (at most 15 s).</summary>
    static async Task<List<RecordedLog>> WaitForLinesAsync(RecordingLoggerProvider logs, int count)
    {
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (logs.WithEvent("INVOKE_COMPLETE").Count() < count && waited.Elapsed < TimeSpan.FromSeconds(15))
        {
            await Task.Delay(50, TestContext.Current.CancellationToken);
        }

        return logs.WithEvent("INVOKE_COMPLETE").ToList();
    }

    /// <summary>
    /// A JSON client that leaves while finn works: finn meters nothing until it answers, so nothing is charged. The hold
    /// is released and the key freed at once (not after the reaper's TTL and the key's lease), so a retry with the same
    /// key runs, and the call still logs its INVOKE_COMPLETE line, as a 499.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_client_that_leaves_a_json_invoke_is_charged_nothing_its_key_is_free_again_and_it_logs_499(string engine)
    {
        var logs = new RecordingLoggerProvider();
        var settings = RaisedRateLimits();
        settings["Providers:Local:LatencyMs"] = "2000";
        await using var p = await StartSeededAsync(engine, settings, logs);
        var before = await BudgetAsync(p);
        const string body = """{"prompt":"Say hi","model":"cheap","idempotency_key":"leaves-json-call"}""";

        using (var leave = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken))
        {
            var call = InvokeAsync(p, body, ct: leave.Token);
            await WaitForPendingReservationAsync(p); // finn is still in its 2 s latency
            await leave.CancelAsync(); // the client goes away mid-call
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => call);
        }

        var line = await WaitForLogAsync(logs, "INVOKE_COMPLETE");
        Assert.Equal(499, line.Properties["Status"]);
        Assert.Equal("client_disconnected", line.Properties["Outcome"]);
        Assert.Equal(0L, line.Properties["CostMicro"]);
        Assert.Equal(false, line.Properties["Stream"]);
        Assert.IsType<long>(line.Properties["DurationMs"]);

        var after = await BudgetAsync(p);
        Assert.Equal(before.GetProperty("committedMicro").GetInt64(), after.GetProperty("committedMicro").GetInt64());
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
        Assert.Equal(0, await PendingReservationsAsync(p));
        Assert.Equal(0, await CountKeysAsync(p, "leaves-json-call"));

        // The retry runs (no 409 REQUEST_IN_PROGRESS from a claim left behind) and is charged once.
        using var retry = await InvokeAsync(p, body);
        Assert.Equal(HttpStatusCode.OK, retry.StatusCode);
        Assert.False(retry.Headers.Contains("Idempotency-Replayed"));
        var cost = (await retry.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("cost_micro").GetInt64();
        await AssertChargedAndNothingHeldAsync(p, before, cost);
    }

    /// <summary>
    /// The reaper expired the call's hold while finn worked (its renewals had failed for a whole TTL), so the finalize
    /// finds nothing to post and, under C1, may not charge. The answer still reaches the client, but it, its stored
    /// replay and the INVOKE_COMPLETE line say what was charged: nothing. Before, all three claimed the metered cost.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_call_whose_hold_the_reaper_expired_reports_and_replays_cost_zero(string engine)
    {
        var logs = new RecordingLoggerProvider();
        var settings = RaisedRateLimits();
        settings["Providers:Local:LatencyMs"] = "2000";
        await using var p = await StartSeededAsync(engine, settings, logs);
        var ct = TestContext.Current.CancellationToken;
        var before = await BudgetAsync(p);
        const string body = """{"prompt":"Say hi","model":"cheap","idempotency_key":"hold-expired"}""";

        var call = InvokeAsync(p, body);
        await WaitForPendingReservationAsync(p);
        await using (var writer = await p.Freeside.Services.GetRequiredService<Database>().OpenWriterAsync(ct))
        {
            await Dapper.SqlMapper.ExecuteAsync(writer.Connection, "UPDATE reservations SET expires_at = 0 WHERE status = 'pending'");
        }

        Assert.Equal(1, await p.Freeside.Services.GetRequiredService<Arrakis.Freeside.Ledger.Ledger>().ExpireDueAsync(ct: ct));

        using var response = await call;
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var answer = await response.Content.ReadFromJsonAsync<JsonElement>(ct);
        Assert.NotEmpty(answer.GetProperty("content").GetString()!);
        Assert.Equal(0, answer.GetProperty("cost_micro").GetInt64());
        Assert.Equal(0, answer.GetProperty("cost_cents").GetInt64());

        var finalize = await WaitForLogAsync(logs, "INVOKE_FINALIZE_FAILED");
        Assert.Equal("Expired", finalize.Properties["Outcome"]);
        var line = await WaitForLogAsync(logs, "INVOKE_COMPLETE");
        Assert.Equal(200, line.Properties["Status"]);
        Assert.Equal(0L, line.Properties["CostMicro"]);

        var after = await BudgetAsync(p);
        Assert.Equal(before.GetProperty("committedMicro").GetInt64(), after.GetProperty("committedMicro").GetInt64());
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
        Assert.Null(await p.Freeside.Services.GetRequiredService<Arrakis.Freeside.Ledger.UsageStore>().FindByTraceAsync(answer.GetProperty("trace_id").GetString()!, ct: ct));

        // The replay says the same as the live answer.
        using var replay = await InvokeAsync(p, body);
        Assert.Equal(HttpStatusCode.OK, replay.StatusCode);
        Assert.True(replay.Headers.Contains("Idempotency-Replayed"));
        var replayed = await replay.Content.ReadFromJsonAsync<JsonElement>(ct);
        Assert.Equal(0, replayed.GetProperty("cost_micro").GetInt64());
        Assert.Equal(answer.GetProperty("content").GetString(), replayed.GetProperty("content").GetString());
        await AssertConservedAsync(p);
    }

    /// <summary>
    /// finn sends its <c>: keepalive</c> comment (its response has started) and then fails before any token: freeside
    /// forwarded no content to the client, so nothing is charged even though finn's error frame carries the prompt's
    /// usage, and the key is free for a retry.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_stream_that_fails_before_any_delta_charges_nothing_even_after_finns_keepalive(string engine)
    {
        var finnAnswers = new System.Collections.Concurrent.ConcurrentQueue<string?>();
        var settings = RaisedRateLimits();
        settings["Providers:Local:FailureRate"] = "1"; // fails before its first token (FailAfterTokens 0)
        settings["Providers:Local:LatencyMs"] = "3000"; // well after finn's first keepalive
        settings["Inference:KeepAliveSeconds"] = "1";
        settings["Inference:MaxAttempts"] = "1";
        await using var p = await Platform.StartAsync(engine, settings, (service, b) =>
        {
            if (service == "freeside")
            {
                b.Services.AddHttpClient(Freeside.Identity.IdentitySetup.FinnClient).AddHttpMessageHandler(() => new ContentTypeHandler(finnAnswers));
            }
        });
        await Seeder.For(p.Freeside.Services.GetRequiredService<Database>()).SeedAsync(TestContext.Current.CancellationToken);
        var before = await BudgetAsync(p);

        using var response = await SendStreamAsync(p, """{"prompt":"Say hi","model":"cheap","stream":true,"idempotency_key":"fails-before-output"}""");
        var frames = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);

        // finn had started its SSE answer (only its keepalive can have started it: no token was generated) before it failed.
        Assert.Equal("text/event-stream", Assert.Single(finnAnswers));
        Assert.Contains("event: error", frames, StringComparison.Ordinal);
        Assert.DoesNotContain("event: delta", frames, StringComparison.Ordinal);
        Assert.DoesNotContain("event: done", frames, StringComparison.Ordinal);
        var traceId = JsonDocument.Parse(frames.Split('\n').First(l => l.StartsWith("data:", StringComparison.Ordinal))[5..]).RootElement.GetProperty("trace_id").GetString()!;

        var after = await BudgetAsync(p);
        Assert.Equal(before.GetProperty("committedMicro").GetInt64(), after.GetProperty("committedMicro").GetInt64());
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
        Assert.Equal(0, await PendingReservationsAsync(p));
        Assert.Null(await p.Freeside.Services.GetRequiredService<Arrakis.Freeside.Ledger.UsageStore>().FindByTraceAsync(traceId, ct: TestContext.Current.CancellationToken));
        Assert.Equal(0, await CountKeysAsync(p, "fails-before-output")); // nothing charged, so the key is free for a retry
        await AssertConservedAsync(p);
    }

    /// <summary>
    /// finn fails before any output and the release of the hold then fails in the database too: the client still gets the
    /// upstream error as the stream's last frame (before, the exception tore the stream off after its start frame), the
    /// call logs INVOKE_RELEASE_FAILED and its INVOKE_COMPLETE line, nothing is charged, and the reaper frees the hold.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_stream_whose_release_fails_after_an_upstream_failure_still_ends_with_the_error_frame(string engine)
    {
        var logs = new RecordingLoggerProvider();
        var settings = RaisedRateLimits();
        settings["Providers:Local:FailureRate"] = "1"; // fails before its first token
        settings["Inference:MaxAttempts"] = "1";
        settings["Ledger:ReservationTtl"] = "00:00:02";
        settings["Ledger:ReaperInterval"] = "00:00:00.200";
        await using var p = await StartSeededAsync(engine, settings, logs);
        var ledger = p.Freeside.Services.GetRequiredService<Arrakis.Freeside.Ledger.Ledger>();
        var before = await BudgetAsync(p);

        ledger.FaultPoint = "release.after-claim";
        string text;
        using (var response = await SendStreamAsync(p, """{"prompt":"Say hi","model":"cheap","stream":true,"idempotency_key":"release-fails-stream"}"""))
        {
            text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        }

        ledger.FaultPoint = null;
        var frames = text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        var last = frames[^1];
        Assert.Contains("event: error", last, StringComparison.Ordinal);
        var error = JsonDocument.Parse(last[(last.IndexOf("data:", StringComparison.Ordinal) + 5)..]).RootElement;
        Assert.Equal("PROVIDER_ERROR", error.GetProperty("error").GetString());
        Assert.Equal(502, error.GetProperty("status").GetInt32());
        Assert.NotEmpty(logs.WithEvent("INVOKE_RELEASE_FAILED"));
        var complete = await WaitForLogAsync(logs, "INVOKE_COMPLETE");
        Assert.Equal((502, 0L), ((int)complete.Properties["Status"]!, (long)complete.Properties["CostMicro"]!));

        // The same in JSON: the client gets finn's 502, not a 500 from the failed release.
        ledger.FaultPoint = "release.after-claim";
        using (var json = await InvokeAsync(p, """{"prompt":"Say hi","model":"cheap","idempotency_key":"release-fails-json"}"""))
        {
            ledger.FaultPoint = null;
            Assert.Equal(HttpStatusCode.BadGateway, json.StatusCode);
            Assert.Equal("PROVIDER_ERROR", (await json.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("error").GetString());
        }

        var after = await WaitUntilNothingReservedAsync(p); // the reaper's work, within the 2 s TTL
        Assert.Equal(before.GetProperty("committedMicro").GetInt64(), after.GetProperty("committedMicro").GetInt64());
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
        Assert.Equal(0, await PendingReservationsAsync(p));
        await AssertConservedAsync(p);
    }

    sealed class ContentTypeHandler(System.Collections.Concurrent.ConcurrentQueue<string?> seen) : DelegatingHandler
    {
        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            var response = await base.SendAsync(request, cancellationToken);
            seen.Enqueue(response.Content.Headers.ContentType?.MediaType);
            return response;
        }
    }

    /// <summary>
    /// finn answers but the finalize's write fails in the database (it rolls back whole): the hold is released on the
    /// spot, the failure is logged as INVOKE_FINALIZE_FAILED, the client gets 500 INTERNAL_ERROR and nothing is charged,
    /// and the key is free: once the database writes again, a retry runs and is charged once.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_json_invoke_whose_finalize_fails_answers_500_and_leaves_nothing_reserved(string engine)
    {
        var logs = new RecordingLoggerProvider();
        await using var p = await StartSeededAsync(engine, RaisedRateLimits(), logs);
        var ledger = p.Freeside.Services.GetRequiredService<Arrakis.Freeside.Ledger.Ledger>();
        var before = await BudgetAsync(p);
        const string body = """{"prompt":"Say hi","model":"cheap","idempotency_key":"finalize-fails-json"}""";

        ledger.FaultPoint = "finalize.after-claim";
        using (var response = await InvokeAsync(p, body))
        {
            Assert.Equal(HttpStatusCode.InternalServerError, response.StatusCode);
            Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
            Assert.Equal("INTERNAL_ERROR", (await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("error").GetString());
        }

        ledger.FaultPoint = null;
        var failed = Assert.Single(logs.WithEvent("INVOKE_FINALIZE_FAILED"));
        Assert.Equal(Microsoft.Extensions.Logging.LogLevel.Error, failed.Level);
        var complete = Assert.Single(logs.WithEvent("INVOKE_COMPLETE"));
        Assert.Equal((500, 0L), ((int)complete.Properties["Status"]!, (long)complete.Properties["CostMicro"]!));
        var after = await BudgetAsync(p);
        Assert.Equal(before.GetProperty("committedMicro").GetInt64(), after.GetProperty("committedMicro").GetInt64());
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
        Assert.Equal(0, await PendingReservationsAsync(p));
        Assert.Equal(0, await CountKeysAsync(p, "finalize-fails-json"));
        await AssertConservedAsync(p);

        using var retry = await InvokeAsync(p, body);
        Assert.Equal(HttpStatusCode.OK, retry.StatusCode);
        var cost = (await retry.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("cost_micro").GetInt64();
        await AssertChargedAndNothingHeldAsync(p, before, cost);
    }

    /// <summary>The same failure at the end of a stream: the SSE ends with an INTERNAL_ERROR error frame, not a done frame.</summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_stream_whose_finalize_fails_ends_with_an_internal_error_frame_and_leaves_nothing_reserved(string engine)
    {
        var logs = new RecordingLoggerProvider();
        await using var p = await StartSeededAsync(engine, RaisedRateLimits(), logs);
        var before = await BudgetAsync(p);

        p.Freeside.Services.GetRequiredService<Arrakis.Freeside.Ledger.Ledger>().FaultPoint = "finalize.after-claim";
        using var response = await SendStreamAsync(p, """{"prompt":"Say hi","model":"cheap","stream":true,"idempotency_key":"finalize-fails-stream"}""");
        var frames = (await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken)).Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        p.Freeside.Services.GetRequiredService<Arrakis.Freeside.Ledger.Ledger>().FaultPoint = null;

        Assert.Contains(frames, f => f.Contains("event: delta", StringComparison.Ordinal));
        Assert.DoesNotContain(frames, f => f.Contains("event: done", StringComparison.Ordinal));
        var last = frames[^1];
        Assert.Contains("event: error", last, StringComparison.Ordinal);
        var error = JsonDocument.Parse(last[(last.IndexOf("data:", StringComparison.Ordinal) + 5)..]).RootElement;
        Assert.Equal("INTERNAL_ERROR", error.GetProperty("error").GetString());
        Assert.Equal(500, error.GetProperty("status").GetInt32());

        Assert.Single(logs.WithEvent("INVOKE_FINALIZE_FAILED"));
        var after = await BudgetAsync(p);
        Assert.Equal(before.GetProperty("committedMicro").GetInt64(), after.GetProperty("committedMicro").GetInt64());
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
        Assert.Equal(0, await PendingReservationsAsync(p));
        Assert.Equal(0, await CountKeysAsync(p, "finalize-fails-stream"));
        await AssertConservedAsync(p);
    }

    /// <summary>PostgreSQL runs share one Redis, where the free tier's per-minute limits count every parallel test's invokes.</summary>
    static Dictionary<string, string?> RaisedRateLimits() => new()
    {
        ["RateLimits:Free:CommunityPerMinute"] = "1000",
        ["RateLimits:Free:UserPerMinute"] = "1000",
    };

    static async Task<long> CountKeysAsync(Platform p, string key)
    {
        await using var c = await p.Freeside.Services.GetRequiredService<Database>().OpenAsync(TestContext.Current.CancellationToken);
        return await Dapper.SqlMapper.ExecuteScalarAsync<long>(c, "SELECT COUNT(*) FROM idempotency_keys WHERE idem_key = @key", new { key });
    }

    static async Task<RecordedLog> WaitForLogAsync(RecordingLoggerProvider logs, string eventName)
    {
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            if (logs.WithEvent(eventName).FirstOrDefault() is { } line)
            {
                return line;
            }

            Assert.True(waited.Elapsed < TimeSpan.FromSeconds(15), $"freeside never logged {eventName}");
            await Task.Delay(50, TestContext.Current.CancellationToken);
        }
    }

    static Dictionary<string, string?> ReaperSettings() => new()
    {
        ["Providers:Local:TokenDelayMs"] = "40",
        ["Ledger:ReservationTtl"] = "00:00:02",
        ["Ledger:ReaperInterval"] = "00:00:00.200",
    };

    /// <summary>Routes freeside's calls to finn through a proxy whose cut looks like finn's process dying.</summary>
    static TcpProxy FinnBehindProxy(Platform p)
    {
        var finnUri = new Uri(p.FinnUrl);
        var proxy = new TcpProxy(finnUri.Host, finnUri.Port);
        p.Freeside.Services.GetRequiredService<Microsoft.Extensions.Configuration.IConfiguration>()["Services:FinnUrl"] = $"http://127.0.0.1:{proxy.Port}";
        return proxy;
    }

    static async Task<HttpResponseMessage> SendStreamAsync(Platform p, string body)
    {
        var response = await InvokeAsync(p, body, sse: true, completion: HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return response;
    }

    /// <summary>Reads the start frame and then <paramref name="deltas"/> delta frames; returns the start frame.</summary>
    static async Task<JsonElement> ReadFramesAsync(StreamReader reader, int deltas)
    {
        JsonElement? start = null;
        var seen = 0;
        string? eventName = null;
        while (seen < deltas && await reader.ReadLineAsync(TestContext.Current.CancellationToken) is { } line)
        {
            if (line.StartsWith("event: ", StringComparison.Ordinal))
            {
                eventName = line[7..];
            }
            else if (line.StartsWith("data:", StringComparison.Ordinal))
            {
                start ??= eventName == "start" ? JsonDocument.Parse(line[5..]).RootElement : null;
                seen += eventName == "delta" ? 1 : 0;
            }
        }

        Assert.Equal(deltas, seen);
        Assert.NotNull(start);
        return start.Value;
    }

    /// <summary>
    /// A prompt within the 200,000-character limit runs in any script: freeside sent finn every character outside ASCII
    /// as a 6-byte \uXXXX escape, so 180,000 characters of Japanese came to over a megabyte, finn refused the body (413)
    /// and the caller got 502 UPSTREAM_REJECTED for a request freeside itself had admitted.
    /// </summary>
    [Fact]
    public async Task A_prompt_within_the_length_limit_in_any_script_runs_instead_of_a_502()
    {
        await using var p = await StartSeededAsync();
        var prompt = new string('語', 180_000);

        using var response = await InvokeAsync(p, JsonSerializer.Serialize(new { prompt, model = "cheap" }));

        var text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        Assert.True(response.StatusCode == HttpStatusCode.OK, text);
        var body = JsonDocument.Parse(text).RootElement;
        Assert.True(body.GetProperty("usage").GetProperty("prompt_tokens").GetInt64() > 0);
        Assert.True(body.GetProperty("cost_micro").GetInt64() > 0);
        await AssertConservedAsync(p);
    }

    /// <summary>
    /// A request whose messages finn could never read (fifty thousand short messages: well under the prompt's length limit,
    /// but over finn's body limit as JSON) is refused up front as the caller's mistake, 400 naming messages, with nothing
    /// reserved or charged, and the x402 route refuses it before quoting a price for it. It was admitted, reserved, sent,
    /// refused by finn (413) and answered 502 UPSTREAM_REJECTED: a server error any member could produce at will.
    /// </summary>
    [Fact]
    public async Task A_body_finn_could_not_read_is_refused_as_a_400_before_anything_is_reserved_or_quoted()
    {
        await using var p = await StartSeededAsync();
        var before = await BudgetAsync(p);
        var body = JsonSerializer.Serialize(new
        {
            model = "cheap",
            messages = Enumerable.Range(0, 50_000).Select(_ => new { role = "user", content = "x" }),
        });
        Assert.True(body.Length < 2_000_000);

        using var response = await InvokeAsync(p, body);
        using var paid = await Http.PostAsync(p.FreesideUrl + "/api/v1/x402/invoke", new StringContent(body, Encoding.UTF8, "application/json"), TestContext.Current.CancellationToken);

        foreach (var answer in new[] { response, paid })
        {
            var text = await answer.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
            Assert.True(answer.StatusCode == HttpStatusCode.BadRequest, text);
            Assert.Equal("application/problem+json", answer.Content.Headers.ContentType?.MediaType);
            var problem = JsonDocument.Parse(text).RootElement;
            Assert.Equal(("INVALID_REQUEST", "messages"), (problem.GetProperty("error").GetString(), problem.GetProperty("field").GetString()));
        }

        var after = await BudgetAsync(p);
        Assert.Equal(before.GetProperty("committedMicro").GetInt64(), after.GetProperty("committedMicro").GetInt64());
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
        Assert.Equal(0, await PendingReservationsAsync(p));
    }

    static async Task<JsonElement> WaitUntilNothingReservedAsync(Platform p)
    {
        JsonElement budget;
        var waited = System.Diagnostics.Stopwatch.StartNew();
        do
        {
            await Task.Delay(100, TestContext.Current.CancellationToken);
            budget = await BudgetAsync(p);
        }
        while (budget.GetProperty("reservedMicro").GetInt64() != 0 && waited.Elapsed < TimeSpan.FromSeconds(10));

        return budget;
    }

    static async Task WaitForPendingReservationAsync(Platform p)
    {
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (await PendingReservationsAsync(p) == 0)
        {
            Assert.True(waited.Elapsed < TimeSpan.FromSeconds(10), "the invoke never reserved");
            await Task.Delay(20, TestContext.Current.CancellationToken);
        }

        await Task.Delay(200, TestContext.Current.CancellationToken); // finn is generating by now (40 ms a token, 256 tokens)
    }

    static async Task<long> PendingReservationsAsync(Platform p)
    {
        await using var c = await p.Freeside.Services.GetRequiredService<Database>().OpenAsync(TestContext.Current.CancellationToken);
        return await Dapper.SqlMapper.ExecuteScalarAsync<long>(c, "SELECT COUNT(*) FROM reservations WHERE status = 'pending'");
    }

    static async Task<Arrakis.Freeside.Ledger.UsageEntry> WaitForUsageAsync(Platform p, string traceId)
    {
        var store = p.Freeside.Services.GetRequiredService<Arrakis.Freeside.Ledger.UsageStore>();
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            if (await store.FindByTraceAsync(traceId, ct: TestContext.Current.CancellationToken) is { } usage)
            {
                return usage;
            }

            if (waited.Elapsed > TimeSpan.FromSeconds(10))
            {
                await using var c = await p.Freeside.Services.GetRequiredService<Database>().OpenAsync(TestContext.Current.CancellationToken);
                var reservations = await Dapper.SqlMapper.QueryAsync<string>(c, "SELECT id || ' ' || status || ' ' || amount_micro FROM reservations");
                Assert.Fail($"no usage record for trace {traceId}; reservations: {string.Join(", ", reservations)}");
            }

            await Task.Delay(50, TestContext.Current.CancellationToken);
        }
    }
}
