using System.Text;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Payments;
using Arrakis.Freeside.Tests.Payments;
using Microsoft.Extensions.DependencyInjection;
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

    static async Task<JsonObject> PayTheQuoteAsync(string engine, JsonObject body, Dictionary<string, string?> settings)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var chain = await AnvilChain.StartAsync(ct);
        var payTo = PaymentSigning.AddressOf(PaymentSigning.FreshKey());
        var payerKey = PaymentSigning.FreshKey();
        await chain.MintAsync(PaymentSigning.AddressOf(payerKey), 1_000_000);
        settings["X402:PayTo"] = payTo;
        settings["X402:RpcUrl"] = chain.RpcUrl;
        settings["X402:Settler"] = "Direct";
        settings["X402:RelayerKey"] = PaymentSigning.RelayerKey;
        await using var p = await Platform.StartAsync(engine, settings);
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        HttpRequestMessage Request(string? payment)
        {
            var request = new HttpRequestMessage(HttpMethod.Post, PaymentsApi.InvokePath) { Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json") };
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
        Assert.Equal(amount - answer["payment"]!["costMicro"]!.GetValue<long>(), answer["creditNote"]!["amountMicro"]!.GetValue<long>());
        return answer;
    }
}
