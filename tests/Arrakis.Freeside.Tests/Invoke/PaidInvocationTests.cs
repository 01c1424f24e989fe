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

    /// <summary>A paid call is an invoke: it logs its one INVOKE_COMPLETE line (DESIGN §8), with what it cost.</summary>
    [Fact]
    public async Task A_paid_call_logs_its_invoke_complete_line()
    {
        var logs = new RecordingLoggerProvider();
        var answer = await PayTheQuoteAsync("sqlite", new JsonObject { ["prompt"] = "Say hi", ["model"] = "cheap" }, new Dictionary<string, string?>(), logs: logs);

        var line = Assert.Single(logs.WithEvent("INVOKE_COMPLETE"));
        Assert.Equal((200, "paid", "cheap"), ((int)line.Properties["Status"]!, (string)line.Properties["Outcome"]!, (string)line.Properties["Pool"]!));
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
        var lines = logs.WithEvent("INVOKE_COMPLETE").ToList();
        Assert.Equal(answers.Select(a => a.Status), lines.Select(l => (int)l.Properties["Status"]!));
        Assert.All(lines, l => Assert.Equal("upstream_failed", l.Properties["Outcome"]));
    }

    /// <summary>
    /// A paid call whose finn call throws (a defect; here a handler on freeside's finn client) is answered 502
    /// X402_INVOKE_FAILED and nothing is settled; it still logs its one INVOKE_COMPLETE line (DESIGN §8: every invoke),
    /// with that status. Before, the exception left the paid call without a line.
    /// </summary>
    [Fact]
    public async Task A_paid_call_that_throws_logs_its_invoke_complete_line_with_the_status_it_is_answered()
    {
        var logs = new RecordingLoggerProvider();
        var answers = await PayForEachAsync(new Dictionary<string, string?>(), calls: 1, logs,
            b => b.Services.AddHttpClient(Arrakis.Freeside.Identity.IdentitySetup.FinnClient).AddHttpMessageHandler(() => new ThrowingHandler()));

        var (status, _, body) = Assert.Single(answers);
        Assert.Equal((502, X402Errors.InvokeFailed), (status, body["error"]!.GetValue<string>()));
        var line = Assert.Single(logs.WithEvent("INVOKE_COMPLETE"));
        Assert.Equal((502, "error", "cheap"), ((int)line.Properties["Status"]!, (string)line.Properties["Outcome"]!, (string)line.Properties["Pool"]!));
        Assert.Equal(0L, line.Properties["CostMicro"]);
        Assert.IsType<long>(line.Properties["DurationMs"]);
    }

    sealed class ThrowingHandler : DelegatingHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken ct) =>
            throw new InvalidOperationException("injected: an error no part of the finn call expects");
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
        RecordingLoggerProvider logs, Action<Microsoft.AspNetCore.Builder.WebApplicationBuilder>? freeside = null)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var chain = await AnvilChain.StartAsync(ct);
        var (payTo, payerKey) = await PayOnChainAsync(chain, settings);
        await using var p = await Platform.StartAsync("sqlite", settings, (service, b) =>
        {
            if (service == "freeside")
            {
                b.Logging.AddProvider(logs);
                freeside?.Invoke(b);
            }
        });
        var options = p.Freeside.Services.GetRequiredService<IOptions<X402Options>>().Value;
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        HttpRequestMessage Request(string? payment)
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

        var answers = new List<(int, TimeSpan?, JsonObject)>();
        for (var i = 0; i < calls; i++)
        {
            using var unpaid = await http.SendAsync(Request(null), ct);
            Assert.Equal(402, (int)unpaid.StatusCode);
            var accepted = X402Codec.DecodeNode(unpaid.Headers.GetValues(X402Headers.PaymentRequired).Single())!["accepts"]![0]!.AsObject();
            var a = PaymentSigning.Authorization(payerKey, payTo, long.Parse(accepted["amount"]!.GetValue<string>()), 0, DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 60);
            using var paid = await http.SendAsync(Request(PaymentSigning.Header(PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(options, a, payerKey)))), ct);
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
