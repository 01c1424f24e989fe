using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Arrakis.Finn.Inference.Providers;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Finn.Tests.Inference;

/// <summary>finn's invoke API over real HTTP, with tokens minted by the running freeside's issuer.</summary>
public sealed class InvokeApiTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    internal static string Body(string prompt, string pool = "cheap", int maxTokens = 256, bool stream = false) =>
        JsonSerializer.Serialize(new FinnInvokeRequest([new ChatMessage("user", prompt)], pool, maxTokens, "nft:7", stream, "trace-" + Guid.NewGuid().ToString("N")[..8]));

    internal static Task<HttpResponseMessage> PostAsync(Platform platform, string body, string tier = "free", string[]? allowed = null,
        string? reqHash = "auto", string audience = "loa-finn", bool sse = false) =>
        PostAsync(platform, Encoding.UTF8.GetBytes(body), tier, allowed, reqHash, audience, sse);

    internal static async Task<HttpResponseMessage> PostAsync(Platform platform, byte[] body, string tier = "free", string[]? allowed = null,
        string? reqHash = "auto", string audience = "loa-finn", bool sse = false)
    {
        var claims = new Dictionary<string, object>
        {
            ["tenant_id"] = "tenant-1",
            ["community_id"] = "community-1",
            ["tier"] = tier,
            ["allowed_pools"] = allowed ?? ["cheap"],
            ["reservation_id"] = "res-" + Guid.NewGuid().ToString("N")[..8],
        };
        if (reqHash is not null)
        {
            claims["req_hash"] = reqHash == "auto" ? FinnContract.RequestHash(body) : reqHash;
        }

        var token = platform.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", audience, claims);
        using var client = new HttpClient { BaseAddress = new Uri(platform.FinnUrl + "/") };
        using var request = new HttpRequestMessage(HttpMethod.Post, FinnContract.InvokePath)
        {
            Content = new ByteArrayContent(body) { Headers = { ContentType = new MediaTypeHeaderValue("application/json") } },
        };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        if (sse)
        {
            request.Headers.Accept.ParseAdd("text/event-stream");
        }

        return await client.SendAsync(request, Ct);
    }

    internal static async Task<JsonElement> JsonAsync(HttpResponseMessage response) =>
        JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.Clone();

    /// <summary>Parses an SSE body into (event, data) frames and comment lines.</summary>
    internal static (List<(string Event, string Data)> Frames, List<string> Comments) ParseSse(string text)
    {
        var frames = new List<(string, string)>();
        var comments = new List<string>();
        foreach (var block in text.Replace("\r\n", "\n", StringComparison.Ordinal).Split("\n\n", StringSplitOptions.RemoveEmptyEntries))
        {
            string? name = null;
            string? data = null;
            foreach (var line in block.Split('\n'))
            {
                if (line.StartsWith(':'))
                {
                    comments.Add(line);
                }
                else if (line.StartsWith("event: ", StringComparison.Ordinal))
                {
                    name = line[7..];
                }
                else if (line.StartsWith("data: ", StringComparison.Ordinal))
                {
                    data = line[6..];
                }
            }

            if (data is not null)
            {
                frames.Add((name ?? "message", data));
            }
        }

        return (frames, comments);
    }

    [Fact]
    public async Task Json_invoke_returns_a_metered_simulated_result()
    {
        await using var platform = await Platform.StartAsync(settings: new Dictionary<string, string?> { ["Routing:Mode"] = "disabled" });
        var body = Body("Say hello in exactly 3 words");
        using var response = await PostAsync(platform, body);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        // Sent with its length, not chunked: freeside has the whole answer as soon as it is written.
        // (ContentLength alone would be computed from the buffered body; the wire headers tell.)
        Assert.NotEqual(true, response.Headers.TransferEncodingChunked);
        Assert.Equal((await response.Content.ReadAsByteArrayAsync(TestContext.Current.CancellationToken)).Length.ToString(System.Globalization.CultureInfo.InvariantCulture),
            Assert.Single(response.Content.Headers.NonValidated["Content-Length"]));
        var json = await JsonAsync(response);
        var content = json.GetProperty("content").GetString()!;
        Assert.Equal(3, content.Split(' ', StringSplitOptions.RemoveEmptyEntries).Length);
        Assert.Equal("local-mini-a", json.GetProperty("model").GetString());
        Assert.Equal("cheap", json.GetProperty("pool").GetString());
        Assert.Equal("local", json.GetProperty("provider").GetString());
        Assert.True(json.GetProperty("simulated").GetBoolean());
        var prompt = json.GetProperty("usage").GetProperty("prompt_tokens").GetInt64();
        var completion = json.GetProperty("usage").GetProperty("completion_tokens").GetInt64();
        Assert.Equal(Tokenizer.PromptTokens([new ChatMessage("user", "Say hello in exactly 3 words")]), prompt);
        Assert.Equal(Tokenizer.Count(content), completion);
        Assert.Equal(PoolCatalog.CostMicro(new PoolCatalog().Pools["cheap"], prompt, completion), json.GetProperty("cost_micro").GetInt64());
        Assert.Equal("disabled", json.GetProperty("routing").GetProperty("mode").GetString());
        Assert.Equal("disabled", json.GetProperty("routing").GetProperty("reason").GetString());
        Assert.Equal("local-mini-a", json.GetProperty("routing").GetProperty("chosen").GetString());

        // Output is capped at max_tokens.
        using var capped = await PostAsync(platform, Body("Write a 10000 word essay on chaos engineering", maxTokens: 7));
        var cappedJson = await JsonAsync(capped);
        Assert.Equal(7, cappedJson.GetProperty("usage").GetProperty("completion_tokens").GetInt64());
        Assert.Equal("length", cappedJson.GetProperty("finish_reason").GetString());
    }

    [Fact]
    public async Task Streaming_invoke_sends_delta_frames_then_one_done_frame()
    {
        await using var platform = await Platform.StartAsync(settings: new Dictionary<string, string?> { ["Routing:Mode"] = "disabled" });
        using var response = await PostAsync(platform, Body("Explain autopoiesis in one sentence", stream: true), sse: true);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        var (frames, _) = ParseSse(await response.Content.ReadAsStringAsync(Ct));
        var deltas = frames.Where(f => f.Event == FinnContract.DeltaEvent).Select(f => JsonDocument.Parse(f.Data).RootElement.GetProperty("content").GetString()).ToList();
        Assert.True(deltas.Count > 3);
        var done = Assert.Single(frames, f => f.Event == FinnContract.DoneEvent);
        Assert.Equal(done, frames[^1]);
        Assert.DoesNotContain(frames, f => f.Event == FinnContract.ErrorEvent);
        var result = JsonSerializer.Deserialize<FinnInvokeResult>(done.Data)!;
        Assert.Equal(result.Content, string.Concat(deltas));
        Assert.Equal(deltas.Count, result.Usage.CompletionTokens);
        Assert.Contains("autopoiesis", result.Content, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task Requests_are_checked_before_any_generation()
    {
        await using var platform = await Platform.StartAsync(settings: new Dictionary<string, string?> { ["Routing:Mode"] = "disabled" });
        var body = Body("Hi");

        using (var r = await PostAsync(platform, body, reqHash: FinnContract.RequestHash(Encoding.UTF8.GetBytes(body + " "))))
        {
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            Assert.Equal("REQ_HASH_MISMATCH", (await JsonAsync(r)).GetProperty("error").GetString());
        }

        using (var r = await PostAsync(platform, body, reqHash: null))
        {
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            Assert.Equal("REQ_HASH_MISMATCH", (await JsonAsync(r)).GetProperty("error").GetString());
        }

        using (var r = await PostAsync(platform, body, audience: "arrakis"))
        {
            Assert.Equal(HttpStatusCode.Unauthorized, r.StatusCode);
            Assert.Equal("UNAUTHORIZED", (await JsonAsync(r)).GetProperty("error").GetString());
        }

        // The token allows architect but the free tier does not.
        using (var r = await PostAsync(platform, Body("Hi", pool: "architect"), tier: "free", allowed: ["cheap", "architect"]))
        {
            Assert.Equal(HttpStatusCode.Forbidden, r.StatusCode);
            Assert.Equal("POOL_NOT_ALLOWED", (await JsonAsync(r)).GetProperty("error").GetString());
        }

        // The tier allows reviewer but the token does not.
        using (var r = await PostAsync(platform, Body("Hi", pool: "reviewer"), tier: "enterprise", allowed: ["cheap"]))
        {
            Assert.Equal(HttpStatusCode.Forbidden, r.StatusCode);
            Assert.Equal("POOL_NOT_ALLOWED", (await JsonAsync(r)).GetProperty("error").GetString());
        }

        using (var r = await PostAsync(platform, Body("Hi", pool: "reviewer"), tier: "enterprise", allowed: ["cheap", "reviewer"]))
        {
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            Assert.Equal("local-reviewer", (await JsonAsync(r)).GetProperty("model").GetString());
        }

        foreach (var (bad, field) in new[]
        {
            ("""{"messages":[],"pool":"cheap","max_tokens":10,"stream":false,"trace_id":"t"}""", "messages"),
            ("""{"messages":[{"role":"robot","content":"x"}],"pool":"cheap","max_tokens":10,"stream":false,"trace_id":"t"}""", "messages[0].role"),
            ("""{"messages":[{"role":"user","content":"x"}],"pool":"cheap","max_tokens":0,"stream":false,"trace_id":"t"}""", "max_tokens"),
            ("""{"messages":[{"role":"user","content":"x"}],"pool":"nope","max_tokens":10,"stream":false,"trace_id":"t"}""", "pool"),
            ("""{"messages":[{"role":"user","content":"x"}],"pool":"cheap","max_tokens":999999,"stream":false,"trace_id":"t"}""", "max_tokens"),
        })
        {
            using var r = await PostAsync(platform, bad);
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            var problem = await JsonAsync(r);
            Assert.Equal("INVALID_REQUEST", problem.GetProperty("error").GetString());
            Assert.Equal(field, problem.GetProperty("field").GetString());
        }
    }

    /// <summary>
    /// Text that cannot be kept (a lone surrogate, invalid UTF-8) or a repeated name is 400 naming the field, also in a
    /// field the deserializer would skip. Before, the skipped ones were accepted (200) and the rest blamed the converter.
    /// </summary>
    [Fact]
    public async Task Invalid_text_and_repeated_names_are_400_naming_the_field()
    {
        await using var platform = await Platform.StartAsync(settings: new Dictionary<string, string?> { ["Routing:Mode"] = "disabled" });
        const string Good = """{"messages":[{"role":"user","content":"x"}],"pool":"cheap","max_tokens":10,"stream":false,"trace_id":"t"}""";
        var cases = new (string Field, byte[] Body)[]
        {
            ("messages[0].content", Encoding.UTF8.GetBytes(Good.Replace("\"x\"", "\"x\\ud800\"", StringComparison.Ordinal))),
            ("extra", Encoding.UTF8.GetBytes(Good[..^1] + ",\"extra\":\"\\udc00\"}")),
            ("body", [.. Encoding.UTF8.GetBytes(Good[..^1] + ",\"e"), 0xff, .. "\":1}"u8]),
            ("trace_id", [.. Encoding.UTF8.GetBytes(Good[..^2]), 0xc3, .. "\"}"u8]),
            ("pool", Encoding.UTF8.GetBytes(Good.Replace("\"pool\":\"cheap\"", "\"pool\":\"cheap\",\"pool\":\"architect\"", StringComparison.Ordinal))),
        };
        var wrong = new List<string>();
        foreach (var (field, body) in cases)
        {
            using var r = await PostAsync(platform, body);
            if (ProblemBodies.Mismatch(r.StatusCode, await r.Content.ReadAsStringAsync(Ct), field) is { } miss)
            {
                wrong.Add(miss);
            }
        }

        Assert.True(wrong.Count == 0, string.Join("; ", wrong));
    }

    [Fact]
    public async Task A_model_that_always_fails_is_skipped_and_reported_in_health()
    {
        await using var platform = await Platform.StartAsync(settings: new Dictionary<string, string?>
        {
            ["Routing:Mode"] = "disabled", // these tests pin the deterministic choice; routing has its own tests
            ["Providers:Local:Models:local-mini-a:FailureRate"] = "1",
            ["Inference:RetryBaseDelayMs"] = "1",
            ["Inference:RetryMaxDelayMs"] = "5",
        });
        using var response = await PostAsync(platform, Body("Say hi"));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var json = await JsonAsync(response);
        Assert.Equal("local-mini-b", json.GetProperty("model").GetString());
        Assert.Equal("local-mini-b", json.GetProperty("routing").GetProperty("chosen").GetString());

        using var client = new HttpClient();
        using var health = await client.GetAsync(platform.FinnUrl + "/health", Ct);
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        var h = await JsonAsync(health);
        Assert.Equal("degraded", h.GetProperty("status").GetString());
        var pools = h.GetProperty("checks").GetProperty("pools");
        Assert.Equal("degraded", pools.GetProperty("status").GetString());
        var cheap = pools.GetProperty("data").GetProperty("cheap");
        Assert.Equal("degraded", cheap.GetProperty("status").GetString());
        Assert.Equal("open", cheap.GetProperty("models").GetProperty("local-mini-a").GetProperty("breaker").GetString());
        Assert.Equal("closed", cheap.GetProperty("models").GetProperty("local-mini-b").GetProperty("breaker").GetString());
        Assert.Equal("healthy", pools.GetProperty("data").GetProperty("architect").GetProperty("status").GetString());

        // The open breaker keeps the failing model out of the next request's way.
        using var second = await PostAsync(platform, Body("Say hi again"));
        Assert.Equal("local-mini-b", (await JsonAsync(second)).GetProperty("model").GetString());
    }

    [Fact]
    public async Task When_every_model_fails_the_answer_is_502_then_503()
    {
        await using var platform = await Platform.StartAsync(settings: new Dictionary<string, string?>
        {
            ["Routing:Mode"] = "disabled", // these tests pin the deterministic choice; routing has its own tests
            ["Providers:Local:FailureRate"] = "1",
            ["Inference:RetryBaseDelayMs"] = "1",
            ["Inference:RetryMaxDelayMs"] = "5",
        });
        using (var r = await PostAsync(platform, Body("Hi")))
        {
            Assert.Equal(HttpStatusCode.BadGateway, r.StatusCode);
            Assert.Equal("PROVIDER_ERROR", (await JsonAsync(r)).GetProperty("error").GetString());
        }

        // Every breaker of the pool is open: 503, with the soonest half-open time (30 s ± 20 %) as Retry-After.
        foreach (var stream in new[] { true, false })
        {
            using var r = await PostAsync(platform, Body("Hi", stream: stream), sse: stream);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, r.StatusCode);
            Assert.Equal("NO_HEALTHY_MODEL", (await JsonAsync(r)).GetProperty("error").GetString());
            var wait = r.Headers.RetryAfter?.Delta;
            Assert.True(wait >= TimeSpan.FromSeconds(20) && wait <= TimeSpan.FromSeconds(37), $"Retry-After {r.Headers.RetryAfter}");
        }
    }

    [Fact]
    public async Task A_failure_mid_stream_ends_with_an_error_frame_carrying_what_was_generated()
    {
        await using var platform = await Platform.StartAsync(settings: new Dictionary<string, string?>
        {
            ["Routing:Mode"] = "disabled", // these tests pin the deterministic choice; routing has its own tests
            ["Providers:Local:FailureRate"] = "1",
            ["Providers:Local:FailAfterTokens"] = "3",
        });
        using var response = await PostAsync(platform, Body("Describe resilient systems", stream: true), sse: true);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var (frames, _) = ParseSse(await response.Content.ReadAsStringAsync(Ct));
        Assert.Equal(3, frames.Count(f => f.Event == FinnContract.DeltaEvent));
        var error = Assert.Single(frames, f => f.Event == FinnContract.ErrorEvent);
        Assert.Equal(error, frames[^1]);
        Assert.DoesNotContain(frames, f => f.Event == FinnContract.DoneEvent);
        var problem = JsonDocument.Parse(error.Data).RootElement;
        Assert.Equal("PROVIDER_ERROR", problem.GetProperty("error").GetString());
        Assert.Equal(502, problem.GetProperty("status").GetInt32());
        Assert.Equal(3, problem.GetProperty("usage").GetProperty("completion_tokens").GetInt64());
        Assert.True(problem.GetProperty("cost_micro").GetInt64() > 0);
    }

    [Fact]
    public async Task A_slow_stream_sends_keepalive_comments()
    {
        await using var platform = await Platform.StartAsync(settings: new Dictionary<string, string?>
        {
            ["Routing:Mode"] = "disabled", // these tests pin the deterministic choice; routing has its own tests
            ["Inference:KeepAliveSeconds"] = "1",
            ["Providers:Local:LatencyMs"] = "2500",
        });
        using var response = await PostAsync(platform, Body("Hi", stream: true), sse: true);
        var (frames, comments) = ParseSse(await response.Content.ReadAsStringAsync(Ct));
        Assert.Contains(": keepalive", comments);
        Assert.Equal(FinnContract.DoneEvent, frames[^1].Event);
    }

    [Fact]
    public async Task A_client_that_disconnects_stops_generation_at_once()
    {
        // The listener sees every host in this test process: each measurement keeps its meter's scope (the host's meter
        // factory), so only this test's platform counts (a parallel test's cancelled call made this flaky).
        var cancelledIn = new System.Collections.Concurrent.ConcurrentBag<(object? Scope, double Ms)>();
        using var listener = new System.Diagnostics.Metrics.MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "Arrakis.Finn" && instrument.Name == "finn_provider_latency_ms")
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<double>((instrument, ms, tags, _) =>
        {
            foreach (var tag in tags)
            {
                if (tag.Key == "outcome" && (string?)tag.Value == "cancelled")
                {
                    cancelledIn.Add((instrument.Meter.Scope, ms));
                }
            }
        });
        listener.Start();

        await using var platform = await Platform.StartAsync(settings: new Dictionary<string, string?>
        {
            ["Routing:Mode"] = "disabled", // these tests pin the deterministic choice; routing has its own tests
            ["Providers:Local:Models:local-mini-a:TokenDelayMs"] = "100",
        });
        using var client = new HttpClient { BaseAddress = new Uri(platform.FinnUrl + "/") };
        var body = Body("Write a 10000 word essay on chaos engineering", maxTokens: 200, stream: true);
        var token = platform.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", "loa-finn", new Dictionary<string, object>
        {
            ["tier"] = "free", ["allowed_pools"] = new[] { "cheap" }, ["community_id"] = "c", ["req_hash"] = FinnContract.RequestHash(Encoding.UTF8.GetBytes(body)),
        });
        using var request = new HttpRequestMessage(HttpMethod.Post, FinnContract.InvokePath) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);

        using (var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, Ct))
        {
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(Ct));
            Assert.Equal("event: delta", await reader.ReadLineAsync(Ct));
        }

        // 200 tokens at 100 ms would take 20 s; the provider call must end (as cancelled) soon after the disconnect.
        var meters = platform.Finn.Services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>();
        List<double> Cancelled() => cancelledIn.Where(m => ReferenceEquals(m.Scope, meters)).Select(m => m.Ms).ToList();
        for (var i = 0; i < 100 && Cancelled().Count == 0; i++)
        {
            await Task.Delay(50, Ct);
        }

        var ms = Assert.Single(Cancelled());
        Assert.True(ms < 8000, $"generation ran {ms} ms after a disconnect");
    }

    /// <summary>
    /// A vendor answer the adapter cannot read (a lone surrogate, <c>"\ud800"</c>, throws when read as a string) is a
    /// malformed upstream answer, 502 PROVIDER_ERROR like any malformed body, in both modes. It was an unhandled 500.
    /// </summary>
    [Fact]
    public async Task A_vendor_answer_that_cannot_be_read_is_502_not_500()
    {
        await using var vendor = await VendorServer.StartAsync();
        vendor.Behavior = async (ctx, call, _) =>
        {
            if (call.Stream)
            {
                ctx.Response.ContentType = "text/event-stream";
                await ctx.Response.WriteAsync("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi \\ud800\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
                return;
            }

            ctx.Response.ContentType = "application/json";
            await ctx.Response.WriteAsync("{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hi \\ud800\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}");
        };
        await using var platform = await Platform.StartAsync(settings: new Dictionary<string, string?>
        {
            ["Routing:Mode"] = "disabled",
            ["Pools:Pools:cheap:Models:0:Id"] = "vendor-model",
            ["Pools:Pools:cheap:Models:0:Provider"] = "openai",
            ["Providers:OpenAI:BaseUrl"] = vendor.Url + "/v1",
            ["Providers:OpenAI:ApiKey"] = "sk-test-key",
        });

        foreach (var stream in new[] { false, true })
        {
            using var r = await PostAsync(platform, Body("Hi", stream: stream), sse: stream);
            Assert.Equal(HttpStatusCode.BadGateway, r.StatusCode);
            var problem = await JsonAsync(r);
            Assert.Equal("PROVIDER_ERROR", problem.GetProperty("error").GetString());
            Assert.Contains("malformed", problem.GetProperty("detail").GetString(), StringComparison.OrdinalIgnoreCase);
        }

        Assert.Equal(2, vendor.CallCount);
    }
}
