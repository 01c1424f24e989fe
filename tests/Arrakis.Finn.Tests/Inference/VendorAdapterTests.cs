using System.Text.Json;
using Arrakis.Finn.Inference;
using Arrakis.Finn.Inference.Providers;
using Arrakis.Shared.Contracts;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;

namespace Arrakis.Finn.Tests.Inference;

/// <summary>The OpenAI and Anthropic adapters, through the engine, against loopback servers speaking the vendors' wire formats.</summary>
public sealed class VendorAdapterTests : IAsyncLifetime
{
    VendorServer _server = null!;

    public async ValueTask InitializeAsync() => _server = await VendorServer.StartAsync();

    public async ValueTask DisposeAsync() => await _server.DisposeAsync();

    public static TheoryData<string, bool> VendorsAndModes() => new()
    {
        { "openai", false }, { "openai", true }, { "anthropic", false }, { "anthropic", true },
    };

    public static TheoryData<string> Vendors() => new() { "openai", "anthropic" };

    ServiceProvider Services(string vendor, bool withLocalBackup = false, int attemptTimeoutMs = 15000, TimeProvider? time = null, Dictionary<string, string?>? extra = null)
    {
        var config = new Dictionary<string, string?>
        {
            ["Pools:Pools:vendor:InputMicroPerMillion"] = "1000000",
            ["Pools:Pools:vendor:OutputMicroPerMillion"] = "3000000",
            ["Pools:Pools:vendor:Models:0:Id"] = "vendor-model",
            ["Pools:Pools:vendor:Models:0:Provider"] = vendor,
            ["Pools:Pools:vendor:Models:0:VendorModel"] = vendor == "openai" ? "gpt-test-mini" : "claude-test-haiku",
            ["Providers:OpenAI:BaseUrl"] = _server.Url + "/v1",
            ["Providers:OpenAI:ApiKey"] = "sk-test-key",
            ["Providers:Anthropic:BaseUrl"] = _server.Url,
            ["Providers:Anthropic:ApiKey"] = "ak-test-key",
            ["Inference:RetryBaseDelayMs"] = "5",
            ["Inference:RetryMaxDelayMs"] = "20",
            ["Inference:AttemptTimeoutMs"] = attemptTimeoutMs.ToString(),
            // These tests speak each wire format as the caller asked (JSON or SSE); StreamVendorAnswers is tested on its own.
            ["Inference:StreamVendorAnswers"] = "false",
        };
        if (withLocalBackup)
        {
            config["Pools:Pools:vendor:Models:1:Id"] = "local-backup";
            config["Pools:Pools:vendor:Models:1:Provider"] = "local";
        }

        foreach (var (name, value) in extra ?? [])
        {
            config[name] = value;
        }

        var configuration = new ConfigurationBuilder().AddInMemoryCollection(config).Build();
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddMetrics();
        services.AddSingleton<IConfiguration>(configuration);
        if (time is not null)
        {
            services.AddSingleton(time);
        }

        services.AddInference(configuration);
        return services.BuildServiceProvider();
    }

    /// <summary>An SSE frame as the vendor writes it (Anthropic names its events; OpenAI sends bare data lines).</summary>
    static async Task FrameAsync(HttpContext ctx, string? name, string data)
    {
        await ctx.Response.WriteAsync((name is null ? "" : $"event: {name}\n") + $"data: {data}\n\n");
        await ctx.Response.Body.FlushAsync();
    }

    const string AnthropicStart = """{"type":"message_start","message":{"id":"msg_test","type":"message","role":"assistant","content":[],"model":"claude-test-haiku","usage":{"input_tokens":11,"output_tokens":1}}}""";

    static string AnthropicDelta(string text) =>
        $$$"""{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":{{{JsonSerializer.Serialize(text)}}}}}""";

    static string OpenAiDelta(string text) =>
        $$"""{"choices":[{"index":0,"delta":{"content":{{JsonSerializer.Serialize(text)}}},"finish_reason":null}]}""";

    static FinnInvokeRequest Request(bool stream, int maxTokens = 64) =>
        new([new ChatMessage("system", "Be brief."), new ChatMessage("user", "Say hello in exactly 3 words")], "vendor", maxTokens, null, stream, "trace-1");

    static async Task<(FinnInvokeResult Result, List<string> Deltas)> InvokeAsync(ServiceProvider sp, FinnInvokeRequest request)
    {
        var engine = sp.GetRequiredService<InferenceEngine>();
        var pool = sp.GetRequiredService<PoolCatalog>().Pools[request.Pool];
        var deltas = new List<string>();
        var result = await engine.InvokeAsync(request, pool, request.Stream ? (d, _) => { deltas.Add(d); return ValueTask.CompletedTask; } : null, TestContext.Current.CancellationToken);
        return (result, deltas);
    }

    /// <summary>
    /// Inference:StreamVendorAnswers (the default): a JSON call is streamed from the vendor, so the attempt timeout bounds
    /// the vendor's silence, not the whole answer. Here the answer takes 5 × 150 ms against a 400 ms timeout: asked for
    /// JSON, the vendor would be cut off (and the model charged with a failure) before it finished.
    /// </summary>
    [Theory]
    [MemberData(nameof(Vendors))]
    public async Task A_json_call_streams_from_the_vendor_so_a_long_answer_is_not_cut_off(string vendor)
    {
        _server.Behavior = (ctx, call, _) => VendorServer.SuccessAsync(ctx, call, "Hello there, friend!", pieceDelay: TimeSpan.FromMilliseconds(150));
        await using var sp = Services(vendor, attemptTimeoutMs: 400, extra: new() { ["Inference:StreamVendorAnswers"] = "true", ["Inference:MaxAttempts"] = "1" });
        var (result, deltas) = await InvokeAsync(sp, Request(stream: false));

        Assert.Equal("Hello there, friend!", result.Content);
        Assert.Equal(new Usage(11, 5), result.Usage); // the stream's exact usage, not an estimate
        Assert.Empty(deltas);
        Assert.True(Assert.Single(_server.Calls).Stream);
    }

    /// <summary>An OpenAI server without stream usage is still asked for JSON when the caller wants JSON: exact usage beats an estimate.</summary>
    [Fact]
    public async Task A_json_call_to_an_openai_server_without_stream_usage_stays_json()
    {
        await using var sp = Services("openai", extra: new() { ["Inference:StreamVendorAnswers"] = "true", ["Providers:OpenAI:StreamUsage"] = "false" });
        var (result, _) = await InvokeAsync(sp, Request(stream: false));

        Assert.Equal(new Usage(11, 5), result.Usage);
        Assert.False(Assert.Single(_server.Calls).Stream);
    }

    /// <summary>Providers:OpenAI:StreamUsage=false: a stream does not send stream_options, which some servers refuse.</summary>
    [Fact]
    public async Task An_openai_stream_without_stream_usage_sends_no_stream_options()
    {
        await using var sp = Services("openai", extra: new() { ["Providers:OpenAI:StreamUsage"] = "false" });
        var (result, _) = await InvokeAsync(sp, Request(stream: true));

        Assert.Equal("Hello there, friend!", result.Content);
        Assert.False(Assert.Single(_server.Calls).Body.TryGetProperty("stream_options", out _));
    }

    [Theory]
    [MemberData(nameof(VendorsAndModes))]
    public async Task Success_maps_content_usage_and_cost(string vendor, bool stream)
    {
        await using var sp = Services(vendor);
        var (result, deltas) = await InvokeAsync(sp, Request(stream));

        Assert.Equal("Hello there, friend!", result.Content);
        Assert.Equal(vendor, result.Provider);
        Assert.Equal("vendor-model", result.Model);
        Assert.False(result.Simulated);
        Assert.Equal(new Usage(11, 5), result.Usage);
        Assert.Equal(PoolCatalog.CostMicro(sp.GetRequiredService<PoolCatalog>().Pools["vendor"], 11, 5), result.CostMicro);
        Assert.Equal(26, result.CostMicro);
        Assert.Equal("stop", result.FinishReason);
        Assert.Equal("disabled", result.Routing.Mode);
        if (stream)
        {
            Assert.True(deltas.Count > 1, "streamed in several deltas");
            Assert.Equal(result.Content, string.Concat(deltas));
        }

        var call = Assert.Single(_server.Calls);
        Assert.Equal(64, call.Body.GetProperty("max_tokens").GetInt32());
        Assert.Equal(stream, call.Stream);
        if (vendor == "openai")
        {
            Assert.Equal("/v1/chat/completions", call.Path);
            Assert.Equal("Bearer sk-test-key", call.Headers["authorization"]);
            Assert.Equal("gpt-test-mini", call.Body.GetProperty("model").GetString());
            Assert.Equal(2, call.Body.GetProperty("messages").GetArrayLength());
            Assert.Equal(stream, call.Body.TryGetProperty("stream_options", out var so) && so.GetProperty("include_usage").GetBoolean());
        }
        else
        {
            Assert.Equal("/v1/messages", call.Path);
            Assert.Equal("ak-test-key", call.Headers["x-api-key"]);
            Assert.Equal("2023-06-01", call.Headers["anthropic-version"]);
            Assert.Equal("claude-test-haiku", call.Body.GetProperty("model").GetString());
            Assert.Equal("Be brief.", call.Body.GetProperty("system").GetString());
            Assert.Equal(1, call.Body.GetProperty("messages").GetArrayLength());
        }
    }

    [Theory]
    [MemberData(nameof(VendorsAndModes))]
    public async Task A_429_is_retried_and_then_succeeds(string vendor, bool stream)
    {
        _server.Behavior = (ctx, call, n) => n == 1 ? VendorServer.ErrorAsync(ctx, call, 429, retryAfter: "0") : VendorServer.SuccessAsync(ctx, call, "Hi there, friend!");
        await using var sp = Services(vendor);
        var (result, _) = await InvokeAsync(sp, Request(stream));
        Assert.Equal("Hi there, friend!", result.Content);
        Assert.Equal(2, _server.CallCount);
        Assert.Equal(BreakerState.Closed, sp.GetRequiredService<ModelBreakers>().StateOf("vendor-model"));
    }

    [Theory]
    [MemberData(nameof(Vendors))]
    public async Task Persistent_429_exhausts_the_retries_and_opens_the_breaker(string vendor)
    {
        _server.Behavior = (ctx, call, _) => VendorServer.ErrorAsync(ctx, call, 429);
        await using var sp = Services(vendor);
        var ex = await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, Request(false)));
        Assert.Equal(UpstreamFailure.RateLimited, ex.Failure);
        Assert.Equal((502, "PROVIDER_ERROR"), UpstreamFailures.ToHttp(ex.Failure));
        Assert.Equal(3, _server.CallCount);
        Assert.Equal(BreakerState.Open, sp.GetRequiredService<ModelBreakers>().StateOf("vendor-model"));

        // With the only model's breaker open, the next request is refused without calling the vendor.
        var next = await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, Request(false)));
        Assert.Equal(UpstreamFailure.NoHealthyModel, next.Failure);
        Assert.Equal((503, "NO_HEALTHY_MODEL"), UpstreamFailures.ToHttp(next.Failure));
        Assert.Equal(3, _server.CallCount);
    }

    /// <summary>
    /// A vendor 400 (a prompt too long for the model, a content filter) is about that request: it is not retried on the
    /// model and does not count against its breaker, so a run of bad requests does not take the model away from everyone.
    /// On the old code the third 400 opened the breaker and the fourth request got NO_HEALTHY_MODEL. A 401 still counts.
    /// </summary>
    [Theory]
    [MemberData(nameof(Vendors))]
    public async Task Vendor_400s_are_about_the_request_and_leave_the_breaker_closed(string vendor)
    {
        _server.Behavior = (ctx, call, _) => VendorServer.ErrorAsync(ctx, call, 400);
        await using var sp = Services(vendor);
        for (var i = 1; i <= 5; i++)
        {
            var ex = await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, Request(false)));
            Assert.Equal(UpstreamFailure.Rejected, ex.Failure);
            Assert.Equal(i, _server.CallCount);
        }

        Assert.Equal(BreakerState.Closed, sp.GetRequiredService<ModelBreakers>().StateOf("vendor-model"));

        _server.Behavior = (ctx, call, _) => VendorServer.ErrorAsync(ctx, call, 401);
        for (var i = 0; i < 3; i++)
        {
            await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, Request(false)));
        }

        Assert.Equal(BreakerState.Open, sp.GetRequiredService<ModelBreakers>().StateOf("vendor-model"));
    }

    /// <summary>
    /// A 429 whose Retry-After is longer than retries may wait (RetryMaxDelayMs) is not retried early on the same
    /// model, which would only meet the same 429: the pool's next model answers at once. The old code retried twice
    /// after 20 ms each.
    /// </summary>
    [Theory]
    [MemberData(nameof(Vendors))]
    public async Task A_retry_after_beyond_the_retry_ceiling_falls_back_instead_of_retrying_early(string vendor)
    {
        _server.Behavior = (ctx, call, _) => VendorServer.ErrorAsync(ctx, call, 429, retryAfter: "30");
        await using var sp = Services(vendor, withLocalBackup: true);
        var (result, _) = await InvokeAsync(sp, Request(false));
        Assert.Equal("local-backup", result.Model);
        Assert.Equal(1, _server.CallCount);
    }

    [Theory]
    [MemberData(nameof(VendorsAndModes))]
    public async Task A_500_is_retried_then_reported_as_provider_error(string vendor, bool stream)
    {
        _server.Behavior = (ctx, call, _) => VendorServer.ErrorAsync(ctx, call, 500);
        await using var sp = Services(vendor);
        var ex = await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, Request(stream)));
        Assert.Equal(UpstreamFailure.ServerError, ex.Failure);
        Assert.Contains("500", ex.Message);
        Assert.Equal(3, _server.CallCount);
    }

    [Theory]
    [MemberData(nameof(VendorsAndModes))]
    public async Task A_vendor_that_does_not_answer_times_out(string vendor, bool stream)
    {
        _server.Behavior = (ctx, _, _) => VendorServer.HangAsync(ctx);
        await using var sp = Services(vendor, attemptTimeoutMs: 500);
        var started = DateTime.UtcNow;
        var ex = await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, Request(stream)));
        Assert.Equal(UpstreamFailure.Timeout, ex.Failure);
        Assert.Equal((504, "PROVIDER_TIMEOUT"), UpstreamFailures.ToHttp(ex.Failure));
        Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(10));

        // The server may log the last abandoned request a moment after the client gave up on it.
        for (var i = 0; i < 50 && _server.CallCount < 3; i++)
        {
            await Task.Delay(50, TestContext.Current.CancellationToken);
        }

        Assert.Equal(3, _server.CallCount);
    }

    [Theory]
    [MemberData(nameof(VendorsAndModes))]
    public async Task A_malformed_body_is_not_retried(string vendor, bool stream)
    {
        _server.Behavior = async (ctx, _, _) =>
        {
            ctx.Response.ContentType = stream ? "text/event-stream" : "application/json";
            await ctx.Response.WriteAsync(stream ? "data: {\"choices\": [ {not json\n\n" : "<html>bad gateway</html>");
        };
        await using var sp = Services(vendor);
        var ex = await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, Request(stream)));
        Assert.Equal(UpstreamFailure.Malformed, ex.Failure);
        Assert.Equal((502, "PROVIDER_ERROR"), UpstreamFailures.ToHttp(ex.Failure));
        Assert.Equal(1, _server.CallCount);
    }

    [Theory]
    [MemberData(nameof(Vendors))]
    public async Task A_truncated_stream_after_deltas_fails_with_the_partial_usage(string vendor)
    {
        _server.Behavior = async (ctx, call, _) =>
        {
            ctx.Response.ContentType = "text/event-stream";
            var frame = VendorServer.IsAnthropic(call)
                ? "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello there\"}}\n\n"
                : "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello there\"},\"finish_reason\":null}]}\n\n";
            await ctx.Response.WriteAsync(frame);
        };
        await using var sp = Services(vendor);
        var ex = await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, Request(true)));
        Assert.Equal(UpstreamFailure.Malformed, ex.Failure);
        Assert.NotNull(ex.PartialUsage);
        Assert.Equal(2, ex.PartialUsage.CompletionTokens);
        Assert.Equal(1, _server.CallCount);
    }

    [Theory]
    [MemberData(nameof(Vendors))]
    public async Task Falls_back_to_the_next_model_of_the_pool(string vendor)
    {
        _server.Behavior = (ctx, call, _) => VendorServer.ErrorAsync(ctx, call, 503);
        await using var sp = Services(vendor, withLocalBackup: true);
        var (result, _) = await InvokeAsync(sp, Request(false));
        Assert.Equal("local-backup", result.Model);
        Assert.Equal("local", result.Provider);
        Assert.True(result.Simulated);
        Assert.Equal("local-backup", result.Routing.Chosen);
        Assert.Equal(3, _server.CallCount);
    }

    [Theory]
    [MemberData(nameof(Vendors))]
    public async Task Usage_above_max_tokens_is_capped(string vendor)
    {
        _server.Behavior = (ctx, call, _) => VendorServer.SuccessAsync(ctx, call, "A long answer", inputTokens: 11, outputTokens: 500);
        await using var sp = Services(vendor);
        var (result, _) = await InvokeAsync(sp, Request(false, maxTokens: 40));
        Assert.Equal(40, result.Usage.CompletionTokens);
        Assert.Equal(PoolCatalog.CostMicro(sp.GetRequiredService<PoolCatalog>().Pools["vendor"], 11, 40), result.CostMicro);
        Assert.Equal(40, JsonDocument.Parse(_server.Calls.Single().Body.GetRawText()).RootElement.GetProperty("max_tokens").GetInt32());
    }

    /// <summary>
    /// A lone surrogate (<c>"\ud800"</c>) parses as JSON but throws when read as a string. That exception escaped the engine
    /// (a 500) and left the half-open probe in flight, so the breaker never closed or reopened again.
    /// </summary>
    [Theory]
    [MemberData(nameof(VendorsAndModes))]
    public async Task A_lone_surrogate_in_vendor_content_is_a_malformed_answer_and_resolves_the_probe(string vendor, bool stream)
    {
        const string Bad = "Hi \\ud800 there";
        _server.Behavior = async (ctx, call, _) =>
        {
            var anthropic = VendorServer.IsAnthropic(call);
            if (!stream)
            {
                ctx.Response.ContentType = "application/json";
                await ctx.Response.WriteAsync(anthropic
                    ? $$$"""{"type":"message","content":[{"type":"text","text":"{{{Bad}}}"}],"stop_reason":"end_turn","usage":{"input_tokens":11,"output_tokens":3}}"""
                    : $$$"""{"choices":[{"index":0,"message":{"role":"assistant","content":"{{{Bad}}}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":3}}""");
                return;
            }

            ctx.Response.ContentType = "text/event-stream";
            if (anthropic)
            {
                await FrameAsync(ctx, "message_start", AnthropicStart);
                await FrameAsync(ctx, "content_block_delta", $$$"""{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"{{{Bad}}}"}}""");
                await FrameAsync(ctx, "message_delta", """{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}""");
                await FrameAsync(ctx, "message_stop", """{"type":"message_stop"}""");
            }
            else
            {
                await FrameAsync(ctx, null, $$"""{"choices":[{"index":0,"delta":{"content":"{{Bad}}"},"finish_reason":"stop"}]}""");
                await FrameAsync(ctx, null, "[DONE]");
            }
        };
        var time = new FakeTimeProvider();
        await using var sp = Services(vendor, time: time);
        var breakers = sp.GetRequiredService<ModelBreakers>();
        for (var i = 0; i < 3; i++)
        {
            breakers.RecordFailure("vendor-model", probe: true);
        }

        time.Advance(TimeSpan.FromSeconds(40));
        Assert.Equal(BreakerState.HalfOpen, breakers.StateOf("vendor-model"));

        var ex = await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, Request(stream)));
        Assert.Equal(UpstreamFailure.Malformed, ex.Failure);
        Assert.Equal((502, "PROVIDER_ERROR"), UpstreamFailures.ToHttp(ex.Failure));
        Assert.Null(ex.PartialUsage);
        Assert.Equal(1, _server.CallCount);

        // The failed probe reopened the breaker; after the open period another probe may go.
        Assert.Equal(BreakerState.Open, breakers.StateOf("vendor-model"));
        time.Advance(TimeSpan.FromSeconds(40));
        Assert.True(breakers.IsAvailable("vendor-model"));
        Assert.True(breakers.TryAcquire("vendor-model", out _));
    }

    public static TheoryData<string, int, long> AnthropicEndings() => new()
    {
        { "error", 64, 6 }, { "truncated", 64, 6 }, { "no_final_usage", 64, 6 }, { "error", 4, 4 }, { "no_final_usage", 4, 4 },
    };

    /// <summary>
    /// <c>message_start</c>'s <c>output_tokens</c> (usually 1) is a lower bound; without a final <c>message_delta</c> usage
    /// the charge is the streamed text's count (capped at max_tokens), not that 1.
    /// </summary>
    [Theory]
    [MemberData(nameof(AnthropicEndings))]
    public async Task Anthropic_usage_without_a_final_count_is_what_was_streamed(string ending, int maxTokens, long expected)
    {
        _server.Behavior = async (ctx, _, _) =>
        {
            ctx.Response.ContentType = "text/event-stream";
            await FrameAsync(ctx, "message_start", AnthropicStart);
            await FrameAsync(ctx, "content_block_delta", AnthropicDelta("Hello there,"));
            await FrameAsync(ctx, "content_block_delta", AnthropicDelta(" my good friend"));
            switch (ending)
            {
                case "error":
                    await FrameAsync(ctx, "error", """{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}""");
                    break;
                case "no_final_usage":
                    await FrameAsync(ctx, "message_delta", """{"type":"message_delta","delta":{"stop_reason":"end_turn"}}""");
                    await FrameAsync(ctx, "message_stop", """{"type":"message_stop"}""");
                    break;
            }
        };
        await using var sp = Services("anthropic");
        var request = Request(true, maxTokens);
        if (ending == "no_final_usage")
        {
            var (result, deltas) = await InvokeAsync(sp, request);
            Assert.Equal("Hello there, my good friend", string.Concat(deltas));
            Assert.Equal(new Usage(11, expected), result.Usage);
            Assert.Equal(PoolCatalog.CostMicro(sp.GetRequiredService<PoolCatalog>().Pools["vendor"], 11, expected), result.CostMicro);
        }
        else
        {
            var ex = await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, request));
            Assert.Equal(ending == "error" ? UpstreamFailure.ServerError : UpstreamFailure.Malformed, ex.Failure);
            Assert.Equal(new Usage(11, expected), ex.PartialUsage);
        }

        Assert.Equal(1, _server.CallCount);
    }

    /// <summary>
    /// Anthropic's <c>message_delta</c> carries the stop reason and the final usage; a stream that breaks off after it, before
    /// the empty <c>message_stop</c>, is a whole answer, as an OpenAI stream with its finish_reason but no [DONE] is. It was
    /// a 502 after the full content, so the caller got an error frame (and its key replayed the error) for a finished answer.
    /// </summary>
    [Theory]
    [InlineData("end_turn", "stop")]
    [InlineData("max_tokens", "length")]
    public async Task An_anthropic_stream_that_ends_after_message_delta_without_message_stop_is_a_whole_answer(string stopReason, string finish)
    {
        _server.Behavior = async (ctx, _, _) =>
        {
            ctx.Response.ContentType = "text/event-stream";
            await FrameAsync(ctx, "message_start", AnthropicStart);
            await FrameAsync(ctx, "content_block_delta", AnthropicDelta("Hello there,"));
            await FrameAsync(ctx, "content_block_delta", AnthropicDelta(" my good friend"));
            await FrameAsync(ctx, "content_block_stop", """{"type":"content_block_stop","index":0}""");
            await FrameAsync(ctx, "message_delta", $$$"""{"type":"message_delta","delta":{"stop_reason":"{{{stopReason}}}"},"usage":{"output_tokens":7}}""");
        };
        await using var sp = Services("anthropic");
        var (result, deltas) = await InvokeAsync(sp, Request(true));
        Assert.Equal("Hello there, my good friend", string.Concat(deltas));
        Assert.Equal(result.Content, string.Concat(deltas));
        Assert.Equal(new Usage(11, 7), result.Usage);
        Assert.Equal(finish, result.FinishReason);
        Assert.Equal(1, _server.CallCount);
    }

    /// <summary>A final OpenAI usage chunk without <c>completion_tokens</c> counts the streamed text instead of charging 0 output.</summary>
    [Theory]
    [InlineData(64, 6)]
    [InlineData(4, 4)]
    public async Task OpenAi_usage_without_completion_tokens_counts_the_streamed_text(int maxTokens, long expected)
    {
        _server.Behavior = async (ctx, _, _) =>
        {
            ctx.Response.ContentType = "text/event-stream";
            await FrameAsync(ctx, null, OpenAiDelta("Hello there,"));
            await FrameAsync(ctx, null, OpenAiDelta(" my good friend"));
            await FrameAsync(ctx, null, """{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}""");
            await FrameAsync(ctx, null, """{"choices":[],"usage":{"prompt_tokens":11}}""");
            await FrameAsync(ctx, null, "[DONE]");
        };
        await using var sp = Services("openai");
        var (result, deltas) = await InvokeAsync(sp, Request(true, maxTokens));
        Assert.Equal("Hello there, my good friend", string.Concat(deltas));
        Assert.Equal(new Usage(11, expected), result.Usage);
        Assert.Equal("stop", result.FinishReason);
    }

    /// <summary>
    /// When every attempt failed before a delta reached the caller, nothing was delivered, so the failure carries no usage
    /// (the last attempt's partial usage, e.g. Anthropic's message_start input count, would otherwise be charged).
    /// </summary>
    [Theory]
    [MemberData(nameof(Vendors))]
    public async Task When_nothing_was_forwarded_the_failure_carries_no_usage(string vendor)
    {
        _server.Behavior = async (ctx, call, _) =>
        {
            ctx.Response.ContentType = "text/event-stream";
            if (VendorServer.IsAnthropic(call))
            {
                await FrameAsync(ctx, "message_start", AnthropicStart);
                await FrameAsync(ctx, "error", """{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}""");
            }
            else
            {
                // The stream breaks off after the role chunk: no content, no [DONE].
                await FrameAsync(ctx, null, """{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}""");
            }
        };
        await using var sp = Services(vendor);
        var ex = await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, Request(true)));
        Assert.Equal(vendor == "anthropic" ? UpstreamFailure.ServerError : UpstreamFailure.Malformed, ex.Failure);
        Assert.Null(ex.PartialUsage);
        Assert.Equal(vendor == "anthropic" ? 3 : 1, _server.CallCount);
    }

    /// <summary>
    /// A reasoning model streams its thinking before any content: an OpenAI-compatible server as <c>reasoning_content</c>
    /// (vLLM, DeepSeek) or <c>reasoning</c> (OpenRouter, Ollama) deltas, Anthropic as <c>thinking_delta</c>s. The vendor is
    /// not silent, so the attempt's idle timeout must not fire. Here it thinks for 6 × 150 ms against a 400 ms timeout; the
    /// old adapters passed nothing on until the first content, so the attempt timed out (504, a breaker failure) while the
    /// vendor was still generating. Anthropic's keep-alive ping alone does not count as generating.
    /// </summary>
    [Theory]
    [MemberData(nameof(Vendors))]
    public async Task Reasoning_deltas_before_the_content_keep_the_attempt_alive(string vendor)
    {
        _server.Behavior = async (ctx, call, _) =>
        {
            ctx.Response.ContentType = "text/event-stream";
            var anthropic = VendorServer.IsAnthropic(call);
            if (anthropic)
            {
                await FrameAsync(ctx, "message_start", AnthropicStart);
                await FrameAsync(ctx, "content_block_start", """{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}""");
            }
            else
            {
                await FrameAsync(ctx, null, """{"choices":[{"index":0,"delta":{"role":"assistant","content":null},"finish_reason":null}]}""");
            }

            for (var i = 0; i < 6; i++)
            {
                await Task.Delay(150, ctx.RequestAborted);
                if (anthropic)
                {
                    await FrameAsync(ctx, "content_block_delta", """{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me think."}}""");
                }
                else
                {
                    await FrameAsync(ctx, null, $$"""{"choices":[{"index":0,"delta":{"{{(i % 2 == 0 ? "reasoning_content" : "reasoning")}}":"Let me think."},"finish_reason":null}]}""");
                }
            }

            if (anthropic)
            {
                await FrameAsync(ctx, "content_block_stop", """{"type":"content_block_stop","index":0}""");
                await FrameAsync(ctx, "content_block_start", """{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}""");
                await FrameAsync(ctx, "content_block_delta", AnthropicDelta("Hello there, friend!"));
                await FrameAsync(ctx, "message_delta", """{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":30}}""");
                await FrameAsync(ctx, "message_stop", """{"type":"message_stop"}""");
            }
            else
            {
                await FrameAsync(ctx, null, OpenAiDelta("Hello there, friend!"));
                await FrameAsync(ctx, null, """{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}""");
                await FrameAsync(ctx, null, """{"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":30,"total_tokens":41}}""");
                await FrameAsync(ctx, null, "[DONE]");
            }
        };
        await using var sp = Services(vendor, attemptTimeoutMs: 400, extra: new() { ["Inference:MaxAttempts"] = "1" });
        var (result, deltas) = await InvokeAsync(sp, Request(true));

        Assert.Equal("Hello there, friend!", result.Content);
        Assert.Equal(["Hello there, friend!"], deltas); // the reasoning is not content
        Assert.Equal(new Usage(11, 30), result.Usage); // the vendor's count, reasoning tokens included
        Assert.Equal(1, _server.CallCount);
        Assert.Equal(BreakerState.Closed, sp.GetRequiredService<ModelBreakers>().StateOf("vendor-model"));

        if (vendor == "anthropic")
        {
            // Only pings for as long: the vendor is taken for silent, as before.
            _server.Behavior = async (ctx, _, _) =>
            {
                ctx.Response.ContentType = "text/event-stream";
                for (var i = 0; i < 6; i++)
                {
                    await Task.Delay(150, ctx.RequestAborted);
                    await FrameAsync(ctx, "ping", """{"type":"ping"}""");
                }
            };
            var ex = await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, Request(true)));
            Assert.Equal(UpstreamFailure.Timeout, ex.Failure);
        }
    }

    /// <summary>
    /// An OpenAI <c>message.content</c> is nullable: a reasoning model that spends all of max_tokens thinking answers
    /// <c>"content":null</c> with its <c>reasoning_content</c> (vLLM with a reasoning parser), finish_reason <c>length</c>.
    /// That is an empty answer, charged the vendor's usage, as the same answer streamed already was. As JSON it was a
    /// 502 malformed answer, charged nothing and counted against the model's breaker.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task An_openai_answer_with_null_content_is_an_empty_answer(bool stream)
    {
        _server.Behavior = async (ctx, _, _) =>
        {
            if (!stream)
            {
                ctx.Response.ContentType = "application/json";
                await ctx.Response.WriteAsync("""{"id":"chatcmpl-test","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":null,"reasoning_content":"Let me think about"},"finish_reason":"length"}],"usage":{"prompt_tokens":11,"completion_tokens":64,"total_tokens":75}}""");
                return;
            }

            ctx.Response.ContentType = "text/event-stream";
            await FrameAsync(ctx, null, """{"choices":[{"index":0,"delta":{"role":"assistant","content":null},"finish_reason":null}]}""");
            await FrameAsync(ctx, null, """{"choices":[{"index":0,"delta":{"content":null,"reasoning_content":"Let me think about"},"finish_reason":null}]}""");
            await FrameAsync(ctx, null, """{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}""");
            await FrameAsync(ctx, null, """{"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":64,"total_tokens":75}}""");
            await FrameAsync(ctx, null, "[DONE]");
        };
        await using var sp = Services("openai");
        var (result, deltas) = await InvokeAsync(sp, Request(stream));

        Assert.Equal("", result.Content);
        Assert.Empty(deltas);
        Assert.Equal(new Usage(11, 64), result.Usage);
        Assert.Equal(PoolCatalog.CostMicro(sp.GetRequiredService<PoolCatalog>().Pools["vendor"], 11, 64), result.CostMicro);
        Assert.Equal("length", result.FinishReason);
        Assert.Equal(1, _server.CallCount);
        Assert.Equal(stream, Assert.Single(_server.Calls).Stream);
    }

    /// <summary>A JSON answer whose content is neither a string nor null is still malformed.</summary>
    [Fact]
    public async Task An_openai_answer_whose_content_is_not_a_string_is_malformed()
    {
        _server.Behavior = async (ctx, _, _) =>
        {
            ctx.Response.ContentType = "application/json";
            await ctx.Response.WriteAsync("""{"choices":[{"index":0,"message":{"role":"assistant","content":42},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":1}}""");
        };
        await using var sp = Services("openai");
        var ex = await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, Request(false)));
        Assert.Equal(UpstreamFailure.Malformed, ex.Failure);
        Assert.Equal(1, _server.CallCount);
    }

    public static TheoryData<string, bool> VendorsAndBreakPoints() => new()
    {
        { "openai", true }, { "openai", false }, { "anthropic", true }, { "anthropic", false },
    };

    /// <summary>
    /// The vendor's connection breaks (a reset, a chunked body cut short) instead of ending cleanly. After the vendor has
    /// finished (OpenAI's finish_reason and usage, Anthropic's message_delta) the answer is whole, as when the stream ends
    /// cleanly there: it was a 502 error frame after the full content, charged finn's estimate and counted against the
    /// model's breaker. Broken mid-answer, the failure is charged the vendor's counts so far (Anthropic's message_start
    /// input, an OpenAI-compatible server's running usage) as a stream that ends early is: they were dropped for finn's
    /// estimate (20 prompt tokens, 6 output).
    /// </summary>
    [Theory]
    [MemberData(nameof(VendorsAndBreakPoints))]
    public async Task A_vendor_connection_that_breaks_is_metered_like_a_stream_that_ends_there(string vendor, bool afterFinish)
    {
        _server.Behavior = async (ctx, call, _) =>
        {
            ctx.Response.ContentType = "text/event-stream";
            if (VendorServer.IsAnthropic(call))
            {
                await FrameAsync(ctx, "message_start", AnthropicStart);
                await FrameAsync(ctx, "content_block_delta", AnthropicDelta("Hello there,"));
                await FrameAsync(ctx, "content_block_delta", AnthropicDelta(" my good friend"));
                if (afterFinish)
                {
                    await FrameAsync(ctx, "message_delta", """{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}""");
                }
            }
            else
            {
                // A server with running usage in every chunk (vLLM's continuous_usage_stats) or only at the end.
                var running = afterFinish ? "" : ""","usage":{"prompt_tokens":11,"completion_tokens":9}""";
                await FrameAsync(ctx, null, OpenAiDelta("Hello there,")[..^1] + running + "}");
                await FrameAsync(ctx, null, OpenAiDelta(" my good friend")[..^1] + running + "}");
                if (afterFinish)
                {
                    await FrameAsync(ctx, null, """{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}""");
                    await FrameAsync(ctx, null, """{"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}""");
                }
            }

            await Task.Delay(100);
            ctx.Abort();
        };
        await using var sp = Services(vendor);
        if (afterFinish)
        {
            var (result, deltas) = await InvokeAsync(sp, Request(true));
            Assert.Equal("Hello there, my good friend", string.Concat(deltas));
            Assert.Equal(result.Content, string.Concat(deltas));
            Assert.Equal(new Usage(11, 7), result.Usage);
            Assert.Equal("stop", result.FinishReason);
            Assert.Equal(BreakerState.Closed, sp.GetRequiredService<ModelBreakers>().StateOf("vendor-model"));
        }
        else
        {
            var ex = await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, Request(true)));
            Assert.Equal(UpstreamFailure.ServerError, ex.Failure);
            Assert.Equal(new Usage(11, vendor == "openai" ? 9 : 6), ex.PartialUsage);
        }

        Assert.Equal(1, _server.CallCount);
    }

    /// <summary>
    /// A lone CR ends a line in SSE as LF and CRLF do. Over a stream with CR-only endings, each event was passed on only
    /// when the vendor sent its next bytes (the line reader waited after a CR to see whether an LF followed), so the last
    /// delta before a pause (a reasoning model thinking, a slow server) stalled with it. Here the vendor sends one delta
    /// and waits until the caller has it: on the old code the caller got it only after the vendor gave up waiting.
    /// </summary>
    [Theory]
    [MemberData(nameof(Vendors))]
    public async Task An_event_with_cr_line_endings_reaches_the_caller_before_the_vendor_sends_more(string vendor)
    {
        var delivered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var deliveredInTime = false;
        _server.Behavior = async (ctx, call, _) =>
        {
            var anthropic = VendorServer.IsAnthropic(call);
            async Task CrFrameAsync(string? name, string data)
            {
                await ctx.Response.WriteAsync((name is null ? "" : $"event: {name}\r") + $"data: {data}\r\r");
                await ctx.Response.Body.FlushAsync();
            }

            ctx.Response.ContentType = "text/event-stream";
            if (anthropic)
            {
                await CrFrameAsync("message_start", AnthropicStart);
                await CrFrameAsync("content_block_delta", AnthropicDelta("Hello there,"));
            }
            else
            {
                await CrFrameAsync(null, OpenAiDelta("Hello there,"));
            }

            deliveredInTime = await Task.WhenAny(delivered.Task, Task.Delay(3000, ctx.RequestAborted)) == delivered.Task;
            if (anthropic)
            {
                await CrFrameAsync("content_block_delta", AnthropicDelta(" my good friend"));
                await CrFrameAsync("message_delta", """{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":6}}""");
                await CrFrameAsync("message_stop", """{"type":"message_stop"}""");
            }
            else
            {
                await CrFrameAsync(null, OpenAiDelta(" my good friend"));
                await CrFrameAsync(null, """{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}""");
                await CrFrameAsync(null, """{"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":6,"total_tokens":17}}""");
                await CrFrameAsync(null, "[DONE]");
            }
        };
        await using var sp = Services(vendor);
        var engine = sp.GetRequiredService<InferenceEngine>();
        var request = Request(true);
        var deltas = new List<string>();
        var result = await engine.InvokeAsync(request, sp.GetRequiredService<PoolCatalog>().Pools[request.Pool], (d, _) =>
        {
            deltas.Add(d);
            delivered.TrySetResult();
            return ValueTask.CompletedTask;
        }, TestContext.Current.CancellationToken);

        Assert.True(deliveredInTime, "the first delta reached the caller while the vendor waited");
        Assert.Equal(["Hello there,", " my good friend"], deltas);
        Assert.Equal("Hello there, my good friend", result.Content);
        Assert.Equal(new Usage(11, 6), result.Usage);
        Assert.Equal(1, _server.CallCount);
    }

    const string RoleChunk = """{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}""";

    public static TheoryData<string, string, UpstreamFailure, bool, string> OpenAiCompatibleStreamErrors() => new()
    {
        // vLLM: a request its engine refuses (add_request runs inside the stream) is a 400 before the first chunk.
        { "vllm_400", """data: {"error":{"message":"The decoder prompt (length 5000) is longer than the maximum model length of 4096.","type":"BadRequestError","param":null,"code":400}}""" + "\n\ndata: [DONE]\n\n",
            UpstreamFailure.Rejected, true, "The decoder prompt (length 5000) is longer than the maximum model length of 4096." },
        { "vllm_old_400", """data: {"object":"error","message":"The decoder prompt (length 5000) is longer than the maximum model length of 4096.","type":"BadRequestError","param":null,"code":400}""" + "\n\ndata: [DONE]\n\n",
            UpstreamFailure.Rejected, true, "The decoder prompt (length 5000) is longer than the maximum model length of 4096." },
        // Once it is generating, vLLM reports its own faults in-stream as 400 too (a RuntimeError; in older versions, every exception): a server error.
        { "vllm_400_while_generating", "data: " + RoleChunk + "\n\ndata: " + """{"error":{"message":"CUDA error: an illegal memory access was encountered","type":"BadRequestError","param":null,"code":400}}""" + "\n\ndata: [DONE]\n\n",
            UpstreamFailure.ServerError, false, "CUDA error: an illegal memory access was encountered" },
        { "vllm_500", """data: {"error":{"message":"Engine core died","type":"InternalServerError","param":null,"code":500}}""" + "\n\ndata: [DONE]\n\n",
            UpstreamFailure.ServerError, false, "Engine core died" },
        // TGI: a string error with its error_type, no [DONE] after it.
        { "tgi_validation", """data: {"error":"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 5000 `inputs` tokens and 64 `max_new_tokens`","error_type":"validation"}""" + "\n\n",
            UpstreamFailure.Rejected, true, "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096." },
        { "tgi_generation", "data: " + RoleChunk + "\n\ndata: " + """{"error":"Request failed during generation: Server error: CUDA out of memory.","error_type":"generation"}""" + "\n\n",
            UpstreamFailure.ServerError, false, "Request failed during generation: Server error: CUDA out of memory." },
        { "tgi_overloaded", """data: {"error":"Model is overloaded","error_type":"overloaded"}""" + "\n\n",
            UpstreamFailure.RateLimited, false, "Model is overloaded" },
        // llama.cpp: newer servers send a data frame with an error object; older ones an `error:` line, then [DONE].
        { "llamacpp_500", """data: {"error":{"code":500,"message":"Failed to decode the batch","type":"server_error"}}""" + "\n\n",
            UpstreamFailure.ServerError, false, "Failed to decode the batch" },
        { "llamacpp_old_400", """error: {"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error"}""" + "\n\ndata: [DONE]\n\n",
            UpstreamFailure.Rejected, true, "the request exceeds the available context size, try increasing it" },
        { "llamacpp_old_500", "data: " + RoleChunk + "\n\nerror: " + """{"code":500,"message":"Failed to decode the batch","type":"server_error"}""" + "\n\ndata: [DONE]\n\n",
            UpstreamFailure.ServerError, false, "Failed to decode the batch" },
    };

    /// <summary>
    /// OpenAI-compatible servers report a failure inside a 200 stream, each in its own shape. The failure names the
    /// server's message. A 4xx the server reports before its first chunk is about the request (as an HTTP 400 is): not
    /// retried, and it does not count against the model's breaker, so a few oversized prompts cannot take the model away
    /// from everyone. After the first chunk the server was already generating, so the request was fine and the failure is
    /// the server's, whatever code it carries (vLLM labels its own faults 400). On the old code vLLM's 400s were server
    /// errors (retried, opening the breaker), TGI's errors failed as "ended before [DONE]", and llama.cpp's `error:` line
    /// was skipped, so the failure was an empty answer, charged.
    /// </summary>
    [Theory]
    [MemberData(nameof(OpenAiCompatibleStreamErrors))]
    public async Task An_openai_compatible_server_error_in_the_stream_names_its_message_and_is_classified(
        string server, string wire, UpstreamFailure failure, bool aboutTheRequest, string message)
    {
        _server.Behavior = async (ctx, _, _) =>
        {
            ctx.Response.ContentType = "text/event-stream";
            await ctx.Response.WriteAsync(wire);
        };
        await using var sp = Services("openai");
        var breakers = sp.GetRequiredService<ModelBreakers>();
        var ex = await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, Request(true)));

        Assert.True(failure == ex.Failure, $"{server}: {ex.Failure}, expected {failure} ({ex.Message})");
        Assert.Equal(aboutTheRequest, ex.AboutTheRequest);
        Assert.Contains(message, ex.Message);
        Assert.Null(ex.PartialUsage);
        Assert.Equal(UpstreamFailures.Retryable(failure) ? 3 : 1, _server.CallCount);
        Assert.Equal(aboutTheRequest ? BreakerState.Closed : BreakerState.Open, breakers.StateOf("vendor-model"));
        if (aboutTheRequest)
        {
            // Request after request: the model stays available.
            for (var i = 0; i < 3; i++)
            {
                await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, Request(true)));
            }

            Assert.Equal(4, _server.CallCount);
            Assert.Equal(BreakerState.Closed, breakers.StateOf("vendor-model"));
        }
    }

    /// <summary>A 200 JSON body that is an error (a proxy in front of the server) names the server's message, not "without choices".</summary>
    [Theory]
    [InlineData("""{"error":{"message":"Upstream model crashed","type":"server_error","code":502}}""", UpstreamFailure.ServerError, false)]
    [InlineData("""{"error":"Input validation error: `max_new_tokens` must be <= 4096","error_type":"validation"}""", UpstreamFailure.Rejected, true)]
    public async Task An_openai_compatible_json_error_body_names_its_message(string body, UpstreamFailure failure, bool aboutTheRequest)
    {
        _server.Behavior = async (ctx, _, _) =>
        {
            ctx.Response.ContentType = "application/json";
            await ctx.Response.WriteAsync(body);
        };
        await using var sp = Services("openai");
        var ex = await Assert.ThrowsAsync<UpstreamException>(() => InvokeAsync(sp, Request(false)));

        Assert.Equal(failure, ex.Failure);
        Assert.Equal(aboutTheRequest, ex.AboutTheRequest);
        Assert.Contains(aboutTheRequest ? "Input validation error: `max_new_tokens` must be <= 4096" : "Upstream model crashed", ex.Message);
    }
}
