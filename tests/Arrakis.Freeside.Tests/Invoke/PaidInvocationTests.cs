using System.Diagnostics.Metrics;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Payments;
using Arrakis.Freeside.Seeding;
using Arrakis.Freeside.Tests.Payments;
using Arrakis.Shared.Hosting;
using Arrakis.Shared.Storage;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Arrakis.Freeside.Tests.Invoke;

/// <summary>The x402 paid call through the real invoke pipeline (freeside, finn's local provider, an anvil chain).</summary>
public sealed class PaidInvocationTests
{
    /// <summary>
    /// A body with both messages and prompt runs both (the invoke parser appends the prompt to the messages), so the 402
    /// must price both: paying exactly the quoted amount must buy the call, not a 402 PAYMENT_TOO_SMALL after the
    /// authorization was claimed.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Paying_the_quoted_amount_buys_a_call_with_both_messages_and_prompt(string engine)
    {
        var body = new JsonObject
        {
            ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "hi" }),
            ["prompt"] = new string('x', 20_000),
            ["model"] = "cheap",
        };
        await PayTheQuoteAsync(engine, body, new Dictionary<string, string?>());
    }

    /// <summary>
    /// A paid call is an invoke: it logs its one INVOKE_COMPLETE line (DESIGN §8), with what it cost; the unpaid request
    /// before it, answered with the 402 quote, logs its own (402, rejected).
    /// </summary>
    [Fact]
    public async Task A_paid_call_logs_its_invoke_complete_line()
    {
        var logs = new RecordingLoggerProvider();
        var answer = await PayTheQuoteAsync("sqlite", new JsonObject { ["prompt"] = "Say hi", ["model"] = "cheap" }, new Dictionary<string, string?>(), logs: logs);

        var lines = logs.WithEvent("INVOKE_COMPLETE").ToList();
        Assert.Equal([(402, "rejected"), (200, "paid")], lines.Select(l => ((int)l.Properties["Status"]!, (string)l.Properties["Outcome"]!)));
        var line = lines[1];
        Assert.Equal("cheap", line.Properties["Pool"]);
        Assert.Equal(answer["cost_micro"]!.GetValue<long>(), (long)line.Properties["CostMicro"]!);
        Assert.Equal(answer["trace_id"]!.GetValue<string>(), (string)line.Properties["TraceId"]!);
        Assert.IsType<long>(line.Properties["DurationMs"]);
    }

    /// <summary>
    /// finn answers a paid call 503 NO_HEALTHY_MODEL with Retry-After (every breaker of the pool open): the payer gets the
    /// wait as the invoke route's caller does, in Retry-After. Before, the paid path dropped it. Each failed call logs its
    /// one INVOKE_COMPLETE line.
    /// </summary>
    [Fact]
    public async Task A_paid_call_refused_for_no_healthy_model_passes_finns_retry_after_on()
    {
        var logs = new RecordingLoggerProvider();
        var answers = await PayForEachAsync(new Dictionary<string, string?>
        {
            ["Providers:Local:FailureRate"] = "1",
            ["Inference:RetryBaseDelayMs"] = "1",
            ["Inference:RetryMaxDelayMs"] = "2",
        }, calls: 2, logs);

        Assert.True(answers[0].Status is 502 or 503, answers[0].Body.ToJsonString()); // every model fails: the breakers open
        var (status, retryAfter, body) = answers[1];
        Assert.Equal(503, status);
        Assert.Equal("NO_HEALTHY_MODEL", body["error"]!.GetValue<string>());
        Assert.True(retryAfter >= TimeSpan.FromSeconds(20) && retryAfter <= TimeSpan.FromSeconds(37), $"Retry-After {retryAfter}");
        // Each paid call follows its unpaid request's 402 quote.
        var lines = logs.WithEvent("INVOKE_COMPLETE").ToList();
        Assert.Equal(answers.SelectMany(a => new[] { (402, "rejected"), (a.Status, "upstream_failed") }),
            lines.Select(l => ((int)l.Properties["Status"]!, (string)l.Properties["Outcome"]!)));
    }

    /// <summary>
    /// A paid call whose finn call throws (a defect; here a handler on freeside's finn client) is answered 502
    /// X402_INVOKE_FAILED and nothing is settled; it still logs its one INVOKE_COMPLETE line (DESIGN §8: every invoke),
    /// with that status, and counts once in invocation_count and InferenceLatencyMs, as the invoke route's failed calls
    /// do. Before, the exception left the paid call without a line, and then without a count.
    /// </summary>
    [Fact]
    public async Task A_paid_call_that_throws_logs_its_invoke_complete_line_with_the_status_it_is_answered()
    {
        var logs = new RecordingLoggerProvider();
        var counted = new System.Collections.Concurrent.ConcurrentQueue<(string Instrument, string? Pool, string? Outcome)>();
        using var listener = new MeterListener();
        var answers = await PayForEachAsync(new Dictionary<string, string?>(), calls: 1, logs,
            b => b.Services.AddHttpClient(Arrakis.Freeside.Identity.IdentitySetup.FinnClient).AddHttpMessageHandler(() => new ThrowingHandler()),
            started: p =>
            {
                var factory = p.Freeside.Services.GetRequiredService<IMeterFactory>();
                listener.InstrumentPublished = (instrument, l) =>
                {
                    if (instrument.Meter.Name == MetricNames.AgentMeter && ReferenceEquals(instrument.Meter.Scope, factory))
                    {
                        l.EnableMeasurementEvents(instrument);
                    }
                };
                void Record(Instrument instrument, ReadOnlySpan<KeyValuePair<string, object?>> tags)
                {
                    string? pool = null, outcome = null;
                    foreach (var tag in tags)
                    {
                        pool = tag.Key == "pool" ? tag.Value as string : pool;
                        outcome = tag.Key == "outcome" ? tag.Value as string : outcome;
                    }

                    counted.Enqueue((instrument.Name, pool, outcome));
                }

                listener.SetMeasurementEventCallback<long>((instrument, _, tags, _) => Record(instrument, tags));
                listener.SetMeasurementEventCallback<double>((instrument, _, tags, _) => Record(instrument, tags));
                listener.Start();
            });

        var (status, _, body) = Assert.Single(answers);
        Assert.Equal((502, X402Errors.InvokeFailed), (status, body["error"]!.GetValue<string>()));
        var lines = logs.WithEvent("INVOKE_COMPLETE").ToList();
        Assert.Equal([(402, "rejected"), (502, "error")], lines.Select(l => ((int)l.Properties["Status"]!, (string)l.Properties["Outcome"]!)));
        var line = lines[1];
        Assert.Equal("cheap", line.Properties["Pool"]);
        Assert.Equal(0L, line.Properties["CostMicro"]);
        Assert.IsType<long>(line.Properties["DurationMs"]);
        Assert.Equal((MetricNames.InvocationCount, "cheap", "error"), Assert.Single(counted, c => c.Instrument == MetricNames.InvocationCount));
        Assert.Equal(("cheap", null), Assert.Single(counted, c => c.Instrument == MetricNames.InferenceLatencyMs) is var (_, pool, outcome) ? (pool, outcome) : default);
        Assert.DoesNotContain(counted, c => c.Instrument == MetricNames.InvocationCostMicro); // nothing was charged
    }

    sealed class ThrowingHandler : DelegatingHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken ct) =>
            throw new InvalidOperationException("injected: an error no part of the finn call expects");
    }

    /// <summary>
    /// DESIGN §8: every invoke logs INVOKE_COMPLETE, on the x402 route as on the invoke route. Every answer it gives
    /// before the paid call runs logs its line with the status answered: a body that is not JSON or not an invoke
    /// request (400), the unpaid 402 quote, a payment that cannot be decoded (400), a bearer token that is not valid
    /// (401), each outcome rejected; a payment's stored answer replayed (outcome replayed); a body the client left
    /// mid-way (499). The paid call between them logs its own one line (paid). Before, only the paid call logged a line.
    /// </summary>
    [Fact]
    public async Task Every_answer_the_x402_route_gives_before_the_paid_call_logs_its_invoke_complete_line()
    {
        var ct = TestContext.Current.CancellationToken;
        var logs = new RecordingLoggerProvider();
        var settings = new Dictionary<string, string?>();
        await using var chain = await AnvilChain.StartAsync(ct);
        var (payTo, payerKey) = await PayOnChainAsync(chain, settings);
        await using var p = await Platform.StartAsync("sqlite", settings, (service, b) =>
        {
            if (service == "freeside")
            {
                b.Logging.AddProvider(logs);
            }
        });
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        async Task<HttpResponseMessage> SendAsync(string body, string? payment = null, string? bearer = null)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, PaymentsApi.InvokePath) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
            if (payment is not null)
            {
                request.Headers.TryAddWithoutValidation(X402Headers.PaymentSignature, payment);
            }

            if (bearer is not null)
            {
                request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", bearer);
            }

            return await http.SendAsync(request, ct);
        }

        const string call = """{"prompt":"Say hi","model":"cheap"}""";
        var statuses = new List<int>();
        foreach (var body in new[] { "not json", """{"model":"cheap"}""" })
        {
            using var invalid = await SendAsync(body);
            statuses.Add((int)invalid.StatusCode);
        }

        using var unpaid = await SendAsync(call);
        statuses.Add((int)unpaid.StatusCode);
        var accepted = X402Codec.DecodeNode(unpaid.Headers.GetValues(X402Headers.PaymentRequired).Single())!["accepts"]![0]!.AsObject();
        var options = p.Freeside.Services.GetRequiredService<IOptions<X402Options>>().Value;
        var a = PaymentSigning.Authorization(payerKey, payTo, long.Parse(accepted["amount"]!.GetValue<string>()), 0, DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 60);
        var payment = PaymentSigning.Header(PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(options, a, payerKey)));
        using (var undecodable = await SendAsync(call, "not-a-payment"))
        {
            statuses.Add((int)undecodable.StatusCode);
        }

        using (var badToken = await SendAsync(call, payment, "not-a-token"))
        {
            statuses.Add((int)badToken.StatusCode);
        }

        foreach (var attempt in new[] { "paid", "replayed" })
        {
            using var paid = await SendAsync(call, payment);
            statuses.Add((int)paid.StatusCode);
            Assert.True(paid.IsSuccessStatusCode, attempt + ": " + await paid.Content.ReadAsStringAsync(ct));
        }

        Assert.Equal([400, 400, 402, 400, 401, 200, 200], statuses);

        // The client goes away a few bytes into the 1000 it promised.
        var uri = new Uri(p.FreesideUrl);
        using (var leaves = new System.Net.Sockets.TcpClient())
        {
            await leaves.ConnectAsync(uri.Host, uri.Port, ct);
            await leaves.GetStream().WriteAsync(Encoding.UTF8.GetBytes(
                $"POST {PaymentsApi.InvokePath} HTTP/1.1\r\nHost: {uri.Authority}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"prompt\":\""), ct);
            await Task.Delay(500, ct); // the route is reading the body
            leaves.Close();
        }

        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (logs.WithEvent("INVOKE_COMPLETE").Count() < 8 && waited.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(50, ct);
        }

        var lines = logs.WithEvent("INVOKE_COMPLETE").ToList();
        Assert.Equal(
            [(400, "rejected"), (400, "rejected"), (402, "rejected"), (400, "rejected"), (401, "rejected"), (200, "paid"), (200, "replayed"), (499, "client_disconnected")],
            lines.Select(l => ((int)l.Properties["Status"]!, (string)l.Properties["Outcome"]!)));
        Assert.All(lines, l => Assert.IsType<long>(l.Properties["DurationMs"]));
        Assert.All(lines, l => Assert.False(string.IsNullOrEmpty((string?)l.Properties["TraceId"])));
        Assert.All(lines.Where(l => (string)l.Properties["Outcome"]! != "paid"), l => Assert.Equal(0L, l.Properties["CostMicro"]));
    }

    /// <summary>
    /// The paid call ran, but its settlement then failed (here the payer cancelled the authorization on chain while the call
    /// ran): the client is answered 402 with the paid response withheld, and nothing is charged. The request's one
    /// INVOKE_COMPLETE line says so (402, settlement_failed, no cost), and so do the invoke metrics, instead of the 200
    /// paid the client never got; its duration covers the settlement. A replay of that payment gets the stored 402, logged
    /// as replayed (it was logged rejected).
    /// </summary>
    [Fact]
    public async Task A_paid_call_whose_settlement_fails_logs_the_status_the_client_was_answered()
    {
        var ct = TestContext.Current.CancellationToken;
        var logs = new RecordingLoggerProvider();
        var settings = new Dictionary<string, string?>();
        await using var chain = await AnvilChain.StartAsync(ct);
        var (payTo, payerKey) = await PayOnChainAsync(chain, settings);
        Func<Task>? cancel = null; // set once the authorization is signed; the finn call runs it (once) as it passes
        var counted = new System.Collections.Concurrent.ConcurrentQueue<(string Instrument, string? Outcome, double Value)>();
        using var listener = new MeterListener();
        var answers = await PayAndReplayAsync(settings, payTo, payerKey, logs,
            b => b.Services.AddHttpClient(Arrakis.Freeside.Identity.IdentitySetup.FinnClient)
                .AddHttpMessageHandler(() => new BeforeHandler(() => Interlocked.Exchange(ref cancel, null))),
            (p, a) =>
            {
                var options = p.Freeside.Services.GetRequiredService<IOptions<X402Options>>().Value;
                cancel = () => chain.CancelAuthorizationAsync(a.From, a.Nonce, PaymentSigning.SignCancel(options, a.Nonce, payerKey));
                Listen(listener, p, counted);
            });

        Assert.Equal([402, 402], answers.Select(a => a.Status));
        Assert.Equal(answers[0].Body.ToJsonString(), answers[1].Body.ToJsonString());
        Assert.Null(answers[0].Body["content"]); // the paid response was withheld
        Assert.Equal(0, await chain.BalanceAsync(payTo));
        var lines = logs.WithEvent("INVOKE_COMPLETE").ToList();
        Assert.Equal([(402, "rejected"), (402, "settlement_failed"), (402, "replayed")], lines.Select(l => ((int)l.Properties["Status"]!, (string)l.Properties["Outcome"]!)));
        var line = lines[1];
        Assert.Equal(("cheap", 0L), ((string?)line.Properties["Pool"], (long)line.Properties["CostMicro"]!));
        Assert.True((long)line.Properties["CompletionTokens"]! > 0); // the call ran
        Assert.Equal([(MetricNames.InvocationCount, "settlement_failed")], counted.Where(c => c.Instrument == MetricNames.InvocationCount).Select(c => (c.Instrument, c.Outcome)));
        Assert.DoesNotContain(counted, c => c.Instrument == MetricNames.InvocationCostMicro); // nothing was charged
        // The line covers the whole request, settlement included; the latency metric the call alone (settlement is not inference).
        var latency = Assert.Single(counted, c => c.Instrument == MetricNames.InferenceLatencyMs).Value;
        Assert.InRange(latency, 0, (long)line.Properties["DurationMs"]! + 1);
    }

    /// <summary>
    /// The paid call ran and its settlement's outcome is unknown (the facilitator's /settle answer says nothing definite):
    /// the client is answered 503 settlement_pending, and the request's one INVOKE_COMPLETE line says that (503,
    /// settlement_pending, with the call's cost, which the settlement recovery finishes will charge), not 200 paid.
    /// </summary>
    [Fact]
    public async Task A_paid_call_whose_settlement_is_pending_logs_the_503_it_was_answered()
    {
        var ct = TestContext.Current.CancellationToken;
        var builder = Microsoft.AspNetCore.Builder.WebApplication.CreateSlimBuilder();
        Microsoft.AspNetCore.Hosting.HostingAbstractionsWebHostBuilderExtensions.UseUrls(builder.WebHost, "http://127.0.0.1:0");
        await using var facilitator = builder.Build();
        Microsoft.AspNetCore.Builder.EndpointRouteBuilderExtensions.MapPost(facilitator, "/verify",
            () => Microsoft.AspNetCore.Http.Results.Text("""{"isValid":true}""", "application/json"));
        Microsoft.AspNetCore.Builder.EndpointRouteBuilderExtensions.MapPost(facilitator, "/settle",
            () => Microsoft.AspNetCore.Http.Results.Text("""{"success":"true","transaction":"0x01"}""", "application/json"));
        await facilitator.StartAsync(ct);
        var logs = new RecordingLoggerProvider();
        var payerKey = PaymentSigning.FreshKey();
        var payTo = PaymentSigning.AddressOf(PaymentSigning.FreshKey());
        var settings = new Dictionary<string, string?>
        {
            ["X402:PayTo"] = payTo,
            ["X402:Settler"] = "Facilitator",
            ["X402:FacilitatorUrl"] = facilitator.Urls.Single(),
            ["X402:RpcUrl"] = $"http://127.0.0.1:{TestStorage.FreePort()}",
        };

        var answers = await PayAndReplayAsync(settings, payTo, payerKey, logs, sends: 1);

        var (status, body) = Assert.Single(answers);
        Assert.Equal((503, X402Errors.SettlementPending), (status, body["error"]!.GetValue<string>()));
        var lines = logs.WithEvent("INVOKE_COMPLETE").ToList();
        Assert.Equal([(402, "rejected"), (503, "settlement_pending")], lines.Select(l => ((int)l.Properties["Status"]!, (string)l.Properties["Outcome"]!)));
        Assert.True((long)lines[1].Properties["CostMicro"]! > 0);
        await facilitator.StopAsync(ct);
    }

    /// <summary>
    /// A payment whose stored answer is a failure (its paid call threw: 502 X402_INVOKE_FAILED) is replayed with that 502;
    /// the replay's INVOKE_COMPLETE line says replayed, as a settled payment's replay does, not error (nothing failed).
    /// </summary>
    [Fact]
    public async Task A_replayed_failure_logs_outcome_replayed()
    {
        var ct = TestContext.Current.CancellationToken;
        var logs = new RecordingLoggerProvider();
        var settings = new Dictionary<string, string?>();
        await using var chain = await AnvilChain.StartAsync(ct);
        var (payTo, payerKey) = await PayOnChainAsync(chain, settings);

        var answers = await PayAndReplayAsync(settings, payTo, payerKey, logs,
            b => b.Services.AddHttpClient(Arrakis.Freeside.Identity.IdentitySetup.FinnClient).AddHttpMessageHandler(() => new ThrowingHandler()));

        Assert.Equal([502, 502], answers.Select(a => a.Status));
        Assert.Equal(X402Errors.InvokeFailed, answers[1].Body["error"]!.GetValue<string>());
        var lines = logs.WithEvent("INVOKE_COMPLETE").ToList();
        Assert.Equal([(402, "rejected"), (502, "error"), (502, "replayed")], lines.Select(l => ((int)l.Properties["Status"]!, (string)l.Properties["Outcome"]!)));
    }

    /// <summary>Runs <c>before</c>'s task, when it gives one, ahead of each request it passes on.</summary>
    sealed class BeforeHandler(Func<Func<Task>?> before) : DelegatingHandler
    {
        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken ct)
        {
            if (before() is { } run)
            {
                await run();
            }

            return await base.SendAsync(request, ct);
        }
    }

    /// <summary>Records each invoke measurement of <paramref name="p"/>'s freeside (instrument, outcome tag, value).</summary>
    static void Listen(MeterListener listener, Platform p, System.Collections.Concurrent.ConcurrentQueue<(string, string?, double)> counted)
    {
        var factory = p.Freeside.Services.GetRequiredService<IMeterFactory>();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == MetricNames.AgentMeter && ReferenceEquals(instrument.Meter.Scope, factory))
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        void Record(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            string? outcome = null;
            foreach (var tag in tags)
            {
                outcome = tag.Key == "outcome" ? tag.Value as string : outcome;
            }

            counted.Enqueue((instrument.Name, outcome, value));
        }

        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) => Record(instrument, value, tags));
        listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) => Record(instrument, value, tags));
        listener.Start();
    }

    /// <summary>Freeside, finn and dixie on SQLite, freeside logging to <paramref name="logs"/> and configured by <paramref name="freeside"/>.</summary>
    static Task<Platform> StartAsync(Dictionary<string, string?> settings, RecordingLoggerProvider logs, Action<Microsoft.AspNetCore.Builder.WebApplicationBuilder>? freeside) =>
        Platform.StartAsync("sqlite", settings, (service, b) =>
        {
            if (service == "freeside")
            {
                b.Logging.AddProvider(logs);
                freeside?.Invoke(b);
            }
        });

    /// <summary>A paid-invoke request for one short call, with <paramref name="payment"/> as its x402 v2 payment when given.</summary>
    static HttpRequestMessage Request(string? payment)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, PaymentsApi.InvokePath)
        {
            Content = new StringContent("""{"prompt":"Say hi","model":"cheap"}""", Encoding.UTF8, "application/json"),
        };
        if (payment is not null)
        {
            request.Headers.TryAddWithoutValidation(X402Headers.PaymentSignature, payment);
        }

        return request;
    }

    /// <summary>Asks for one call's 402 quote and signs a payment of it from <paramref name="payerKey"/>: the payment header and its authorization.</summary>
    static async Task<(string Payment, Eip3009Authorization Authorization)> PayQuoteAsync(HttpClient http, X402Options options, string payTo, string payerKey, CancellationToken ct)
    {
        using var unpaid = await http.SendAsync(Request(null), ct);
        Assert.Equal(402, (int)unpaid.StatusCode);
        var accepted = X402Codec.DecodeNode(unpaid.Headers.GetValues(X402Headers.PaymentRequired).Single())!["accepts"]![0]!.AsObject();
        var a = PaymentSigning.Authorization(payerKey, payTo, long.Parse(accepted["amount"]!.GetValue<string>()), 0, DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 60);
        return (PaymentSigning.Header(PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(options, a, payerKey))), a);
    }

    /// <summary>
    /// On one platform, asks for the 402 quote of one call, pays it once (no user token), runs <paramref name="signed"/>
    /// with the signed authorization, then sends that same payment <paramref name="sends"/> times (the first buys the
    /// call, the rest replay it) and returns each answer. The platform has stopped when it returns, so every line is logged.
    /// </summary>
    static async Task<List<(int Status, JsonObject Body)>> PayAndReplayAsync(Dictionary<string, string?> settings, string payTo, string payerKey,
        RecordingLoggerProvider logs, Action<Microsoft.AspNetCore.Builder.WebApplicationBuilder>? freeside = null,
        Action<Platform, Eip3009Authorization>? signed = null, int sends = 2)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var p = await StartAsync(settings, logs, freeside);
        var options = p.Freeside.Services.GetRequiredService<IOptions<X402Options>>().Value;
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        var (payment, a) = await PayQuoteAsync(http, options, payTo, payerKey, ct);
        signed?.Invoke(p, a);
        var answers = new List<(int, JsonObject)>();
        for (var i = 0; i < sends; i++)
        {
            using var paid = await http.SendAsync(Request(payment), ct);
            answers.Add(((int)paid.StatusCode, JsonNode.Parse(await paid.Content.ReadAsStringAsync(ct))!.AsObject()));
        }

        return answers;
    }

    /// <summary>
    /// A fresh payee, and a payer holding 1 USDC on <paramref name="chain"/>; <paramref name="settings"/> have freeside
    /// settle there itself (no facilitator) with the test relayer.
    /// </summary>
    static async Task<(string PayTo, string PayerKey)> PayOnChainAsync(AnvilChain chain, Dictionary<string, string?> settings)
    {
        var payTo = PaymentSigning.AddressOf(PaymentSigning.FreshKey());
        var payerKey = PaymentSigning.FreshKey();
        await chain.MintAsync(PaymentSigning.AddressOf(payerKey), 1_000_000);
        settings["X402:PayTo"] = payTo;
        settings["X402:RpcUrl"] = chain.RpcUrl;
        settings["X402:Settler"] = "Direct";
        settings["X402:RelayerKey"] = PaymentSigning.RelayerKey;
        return (payTo, payerKey);
    }

    /// <summary>
    /// On one platform, pays the 402's quote for <paramref name="calls"/> calls in turn (a fresh authorization each, no
    /// user token) and returns each paid answer's status, Retry-After and body. <paramref name="freeside"/> configures
    /// freeside's host.
    /// </summary>
    static async Task<List<(int Status, TimeSpan? RetryAfter, JsonObject Body)>> PayForEachAsync(Dictionary<string, string?> settings, int calls,
        RecordingLoggerProvider logs, Action<Microsoft.AspNetCore.Builder.WebApplicationBuilder>? freeside = null, Action<Platform>? started = null)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var chain = await AnvilChain.StartAsync(ct);
        var (payTo, payerKey) = await PayOnChainAsync(chain, settings);
        await using var p = await StartAsync(settings, logs, freeside);
        started?.Invoke(p);
        var options = p.Freeside.Services.GetRequiredService<IOptions<X402Options>>().Value;
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        var answers = new List<(int, TimeSpan?, JsonObject)>();
        for (var i = 0; i < calls; i++)
        {
            var (payment, _) = await PayQuoteAsync(http, options, payTo, payerKey, ct);
            using var paid = await http.SendAsync(Request(payment), ct);
            answers.Add(((int)paid.StatusCode, paid.Headers.RetryAfter?.Delta, JsonNode.Parse(await paid.Content.ReadAsStringAsync(ct))!.AsObject()));
        }

        return answers;
    }

    /// <summary>
    /// A body that names no model is priced on X402:DefaultPool, so the paid call must run that pool too (it ran the free
    /// tier's default pool, whatever the quote had priced).
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_body_without_a_model_runs_the_pool_the_quote_priced(string engine)
    {
        var answer = await PayTheQuoteAsync(engine, new JsonObject { ["prompt"] = "Say hi" }, new Dictionary<string, string?> { ["X402:DefaultPool"] = "reasoning" });
        Assert.Equal("reasoning", answer["pool"]!.GetValue<string>());
    }

    /// <summary>
    /// A paid call by a member of a community grants its credit note into the ledger as one x402 lot. The CloudWatch
    /// metric Arrakis/Billing CreditsMinted (the EMF writer over freeside's meters) must count that grant once: the
    /// payment flow's own CreditsMinted (meter Arrakis.Payments) was catalogued under the same name, so every x402 credit
    /// note was counted twice, once by the ledger's grant and once by the payment flow.
    /// </summary>
    [Fact]
    public async Task An_x402_credit_note_is_counted_once_in_the_cloudwatch_credits_minted()
    {
        var emf = new StringWriter();
        var answer = await PayTheQuoteAsync("sqlite", new JsonObject { ["prompt"] = "Say hi", ["model"] = "cheap" }, new Dictionary<string, string?>(), emf);
        var note = answer["creditNote"]!["amountMicro"]!.GetValue<long>();
        Assert.True(note > 0);

        var minted = emf.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => JsonDocument.Parse(l).RootElement.Clone())
            .Where(l => l.GetProperty("_aws").GetProperty("CloudWatchMetrics")[0] is var cw
                && cw.GetProperty("Namespace").GetString() == "Arrakis/Billing" && cw.GetProperty("Metrics")[0].GetProperty("Name").GetString() == "CreditsMinted")
            .ToList();
        Assert.NotEmpty(minted);
        Assert.Equal(note, (long)minted.Sum(l => l.GetProperty("CreditsMinted").GetDouble()));
    }

    /// <summary>
    /// A token that names another community in a <c>community_id</c> claim than the one its tenant maps to acts for its
    /// tenant's community, on the x402 route as on every other: the credit note went to the community the claim named,
    /// so a member of one community paid and another community was credited with the remainder.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_credit_note_goes_to_the_tokens_tenant_community_not_to_a_community_id_claim(string engine)
    {
        var answer = await PayTheQuoteAsync(engine, new JsonObject { ["prompt"] = "Say hi", ["model"] = "cheap" }, new Dictionary<string, string?>(),
            member: new Dictionary<string, object> { ["community_id"] = OtherCommunity },
            prepare: async p => Assert.Equal(Arrakis.Freeside.Communities.CommunityStatus.Created,
                (await p.Freeside.Services.GetRequiredService<Arrakis.Freeside.Communities.CommunityStore>().UpsertAsync(OtherCommunity, "Other", Arrakis.Shared.Contracts.Tier.Free, 10_000, TestContext.Current.CancellationToken)).Status));
        Assert.Equal(Seeder.CommunityId, answer["creditNote"]!["communityId"]!.GetValue<string>());
    }

    const string OtherCommunity = "other-community-001";

    /// <summary>
    /// Pays the 402's quote. With <paramref name="emf"/> or <paramref name="member"/> (extra claims), the call is made by a
    /// member of the seeded community (so the credit note is granted into its ledger, and no other community's); with
    /// <paramref name="emf"/>, the CloudWatch EMF lines freeside's meters produce meanwhile are written there.
    /// </summary>
    static async Task<JsonObject> PayTheQuoteAsync(string engine, JsonObject body, Dictionary<string, string?> settings, StringWriter? emf = null,
        RecordingLoggerProvider? logs = null, IDictionary<string, object>? member = null, Func<Platform, Task>? prepare = null)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var chain = await AnvilChain.StartAsync(ct);
        var (payTo, payerKey) = await PayOnChainAsync(chain, settings);
        await using var p = await Platform.StartAsync(engine, settings, logs is null ? null : (service, b) =>
        {
            if (service == "freeside")
            {
                b.Logging.AddProvider(logs);
            }
        });
        string? memberToken = null;
        if (emf is not null || member is not null)
        {
            await Seeder.For(p.Freeside.Services.GetRequiredService<Database>()).SeedAsync(ct);
            var claims = new Dictionary<string, object>
            {
                ["v"] = 1,
                ["tenant_id"] = "test-tenant",
                ["access_level"] = "free",
            };
            foreach (var (name, value) in member ?? new Dictionary<string, object>())
            {
                claims[name] = value;
            }

            memberToken = p.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", "arrakis", claims, TimeSpan.FromMinutes(5));
        }

        if (prepare is not null)
        {
            await prepare(p);
        }

        using var writer = emf is null ? null : new EmfMetricWriter(new EmfOptions { Enabled = true }, TimeProvider.System, emf, p.Freeside.Services.GetRequiredService<IMeterFactory>());
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        HttpRequestMessage Request(string? payment)
        {
            var request = new HttpRequestMessage(HttpMethod.Post, PaymentsApi.InvokePath) { Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json") };
            if (memberToken is not null)
            {
                request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", memberToken);
            }

            if (payment is not null)
            {
                request.Headers.TryAddWithoutValidation(X402Headers.PaymentSignature, payment);
            }

            return request;
        }

        using var unpaid = await http.SendAsync(Request(null), ct);
        Assert.Equal(402, (int)unpaid.StatusCode);
        var accepted = X402Codec.DecodeNode(unpaid.Headers.GetValues(X402Headers.PaymentRequired).Single())!["accepts"]![0]!.AsObject();
        var amount = long.Parse(accepted["amount"]!.GetValue<string>());
        var options = p.Freeside.Services.GetRequiredService<IOptions<X402Options>>().Value;
        var a = PaymentSigning.Authorization(payerKey, payTo, amount, 0, DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 60);
        var header = PaymentSigning.Header(PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(options, a, payerKey)));

        using var paid = await http.SendAsync(Request(header), ct);
        var answer = JsonNode.Parse(await paid.Content.ReadAsStringAsync(ct))!.AsObject();
        Assert.True(200 == (int)paid.StatusCode, answer.ToJsonString());
        Assert.False(string.IsNullOrEmpty(answer["content"]?.GetValue<string>()));
        Assert.Equal(amount, await chain.BalanceAsync(payTo));
        // The remainder is credited to the token's community; without one it is reported as not credited (and no lot holds it).
        var remainder = amount - answer["payment"]!["costMicro"]!.GetValue<long>();
        var note = answer["creditNote"]!;
        Assert.Equal(memberToken is null ? (0L, remainder) : (remainder, 0L), (note["amountMicro"]!.GetValue<long>(), note["uncreditedMicro"]?.GetValue<long>() ?? 0));
        if (memberToken is not null)
        {
            // The note became the member's community's x402 lot, and no other community's.
            await using var c = await p.Freeside.Services.GetRequiredService<Database>().OpenAsync(ct);
            var lots = (await Dapper.SqlMapper.QueryAsync<(string Community, long Amount)>(c, "SELECT community_id, amount_micro FROM credit_lots WHERE source = 'x402'")).ToList();
            Assert.Equal((Seeder.CommunityId, remainder), Assert.Single(lots));
        }

        writer?.Flush();
        return answer;
    }
}
