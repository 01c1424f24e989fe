using System.Text.Json.Nodes;
using Arrakis.Freeside.Payments;

namespace Arrakis.Freeside.Tests.Payments;

/// <summary>The 402 and the rejections over real HTTP on a real database; no rejection reaches the invoke or the settler.</summary>
public sealed class PaymentsApiTests
{
    static readonly JsonObject Body = new() { ["prompt"] = "x402 payment test", ["model"] = "cheap" };

    // The RPC points at a closed port: any attempt to reach the chain (pre-verify or settle) would fail loudly.
    static Dictionary<string, string?> Settings() => new()
    {
        ["X402:Settler"] = "Direct",
        ["X402:RelayerKey"] = PaymentSigning.RelayerKey,
        ["X402:RpcUrl"] = $"http://127.0.0.1:{TestStorage.FreePort()}",
    };

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Without_payment_answers_402_with_v2_header_v1_body_and_gate_fields(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var host = await PaymentHost.StartAsync(engine, Settings());
        using var response = await host.PostAsync(Body, ct: ct);
        Assert.Equal(402, (int)response.StatusCode);
        Assert.Equal("true", response.Headers.GetValues("X-Payment-Required").Single());
        var price = response.Headers.GetValues("X-Price").Single();

        var v2 = X402Codec.DecodeNode(response.Headers.GetValues("PAYMENT-REQUIRED").Single())!.AsObject();
        Assert.Equal(2, v2["x402Version"]!.GetValue<int>());
        Assert.Equal($"{host.Url}/api/v1/x402/invoke", v2["resource"]!["url"]!.GetValue<string>());
        var accepted = v2["accepts"]![0]!.AsObject();
        Assert.Equal("exact", accepted["scheme"]!.GetValue<string>());
        Assert.Equal("eip155:84532", accepted["network"]!.GetValue<string>());
        Assert.Equal("0x036CbD53842c5426634e7929541eC2318f3dCF7e", accepted["asset"]!.GetValue<string>());
        Assert.Equal(X402Options.TestPayTo, accepted["payTo"]!.GetValue<string>());
        Assert.Equal(price, accepted["amount"]!.GetValue<string>());
        Assert.Equal(60, accepted["maxTimeoutSeconds"]!.GetValue<int>());
        Assert.Equal("USDC", accepted["extra"]!["name"]!.GetValue<string>());
        Assert.Equal("2", accepted["extra"]!["version"]!.GetValue<string>());

        // Worst case of the cheap pool: (input upper bound + 256 output tokens) at list price, at least the 1000 micro floor.
        var expected = Math.Max(1_000, Arrakis.Shared.Contracts.PoolCatalog.CostMicro(new Arrakis.Shared.Contracts.PoolCatalog().Pools["cheap"],
            Arrakis.Shared.Contracts.TokenMath.InputUpperBound([new("user", "x402 payment test")]), 256));
        Assert.Equal(expected.ToString(), price);

        var v1 = JsonNode.Parse(await response.Content.ReadAsStringAsync(ct))!.AsObject();
        Assert.Equal(1, v1["x402Version"]!.GetValue<int>());
        Assert.Equal("payment_required", v1["error"]!.GetValue<string>());
        Assert.Equal(X402Options.TestPayTo, v1["paymentAddress"]!.GetValue<string>());
        Assert.Equal(price, v1["amount"]!.GetValue<string>());
        var v1Accept = v1["accepts"]![0]!.AsObject();
        Assert.Equal("base-sepolia", v1Accept["network"]!.GetValue<string>());
        Assert.Equal(price, v1Accept["maxAmountRequired"]!.GetValue<string>());
        Assert.Equal($"{host.Url}/api/v1/x402/invoke", v1Accept["resource"]!.GetValue<string>());
        Assert.NotNull(v1Accept["description"]);

        // A larger max_tokens asks for more.
        using var bigger = await host.PostAsync(new JsonObject { ["prompt"] = "x402 payment test", ["model"] = "cheap", ["max_tokens"] = 8000 }, ct: ct);
        Assert.True(long.Parse(bigger.Headers.GetValues("X-Price").Single()) > long.Parse(price));
        Assert.Equal(0, host.Invocation.Calls);
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_body_that_is_not_an_invoke_request_is_400(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var host = await PaymentHost.StartAsync(engine, Settings());
        using var response = await host.PostAsync(new JsonObject { ["nothing"] = 1 }, ct: ct);
        Assert.Equal(400, (int)response.StatusCode);
        Assert.Equal("INVALID_REQUEST", JsonNode.Parse(await response.Content.ReadAsStringAsync(ct))!["error"]!.GetValue<string>());
    }

    public static TheoryData<string, string> Rejections()
    {
        var data = new TheoryData<string, string>();
        foreach (var engine in TestStorage.Engines())
        {
            foreach (var c in new[] { "signer", "to", "value", "network", "asset", "expired", "not-yet-valid", "tampered", "base64", "json", "v1-network",
                "repeated-key", "lone-surrogate", "value-newline", "uint256-overflow", "bad-v" })
            {
                data.Add(engine.Data, c);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Rejections))]
    public async Task Each_bad_payment_gets_its_own_error_and_nothing_runs_or_settles(string engine, string kind)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var host = await PaymentHost.StartAsync(engine, Settings());
        var (required, _) = await host.ChallengeAsync(Body, ct);
        var accepted = required["accepts"]![0]!.AsObject();
        var o = host.Options;
        var amount = long.Parse(accepted["amount"]!.GetValue<string>());
        var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var key = PaymentSigning.PayerKey;
        var a = PaymentSigning.Authorization(key, o.PayTo, amount, 0, now + 60);
        string header, name = "PAYMENT-SIGNATURE";
        (int Status, string Code) expected;
        switch (kind)
        {
            case "signer":
                header = PaymentSigning.Header(PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(o, a, PaymentSigning.RelayerKey)));
                expected = (402, X402Errors.InvalidSignature);
                break;
            case "to":
                a = a with { To = PaymentSigning.AddressOf(PaymentSigning.RelayerKey) };
                header = PaymentSigning.Header(PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(o, a, key)));
                expected = (402, X402Errors.RecipientMismatch);
                break;
            case "value":
                a = a with { Value = (amount - 1).ToString() };
                header = PaymentSigning.Header(PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(o, a, key)));
                expected = (402, X402Errors.ValueMismatch);
                break;
            case "network":
                var wrongNet = accepted.DeepClone().AsObject();
                wrongNet["network"] = "eip155:8453";
                header = PaymentSigning.Header(PaymentSigning.V2Payload(wrongNet, a, PaymentSigning.Sign(o, a, key)));
                expected = (402, X402Errors.InvalidNetwork);
                break;
            case "v1-network":
                header = PaymentSigning.Header(PaymentSigning.V1Payload("base", a, PaymentSigning.Sign(o, a, key)));
                name = "X-PAYMENT";
                expected = (402, X402Errors.InvalidNetwork);
                break;
            case "asset":
                var wrongAsset = accepted.DeepClone().AsObject();
                wrongAsset["asset"] = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913";
                header = PaymentSigning.Header(PaymentSigning.V2Payload(wrongAsset, a, PaymentSigning.Sign(o, a, key)));
                expected = (402, X402Errors.AssetMismatch);
                break;
            case "expired":
                a = a with { ValidBefore = (now + 3).ToString() };
                header = PaymentSigning.Header(PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(o, a, key)));
                expected = (402, X402Errors.ValidBefore);
                break;
            case "not-yet-valid":
                a = a with { ValidAfter = (now + 30).ToString(), ValidBefore = (now + 120).ToString() };
                header = PaymentSigning.Header(PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(o, a, key)));
                expected = (402, X402Errors.ValidAfter);
                break;
            case "tampered":
                var payload = PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(o, a, key));
                payload["payload"]!["authorization"]!["value"] = (amount * 10).ToString();
                header = PaymentSigning.Header(payload);
                expected = (402, X402Errors.InvalidSignature);
                break;
            case "base64":
                header = "%%%not-base64%%%";
                expected = (400, X402Errors.InvalidPayload);
                break;
            case "repeated-key":
                var signed = PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(o, a, key)).ToJsonString();
                header = Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes(signed.Replace(
                    $"\"value\":\"{a.Value}\"", $"\"value\":\"{a.Value}\",\"value\":\"{amount * 10}\"", StringComparison.Ordinal)));
                expected = (400, X402Errors.InvalidPayload);
                break;
            case "lone-surrogate":
                var text = PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(o, a, key)).ToJsonString();
                header = Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes(text.Replace("\"scheme\":\"exact\"", "\"scheme\":\"exact\\ud800\"", StringComparison.Ordinal)));
                expected = (400, X402Errors.InvalidPayload);
                break;
            case "value-newline":
                var newline = PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(o, a, key));
                newline["payload"]!["authorization"]!["value"] = a.Value + "\n";
                header = PaymentSigning.Header(newline);
                expected = (400, X402Errors.InvalidPayload);
                break;
            case "uint256-overflow":
                var overflow = PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(o, a, key));
                overflow["payload"]!["authorization"]!["validBefore"] = System.Numerics.BigInteger.Pow(2, 256).ToString();
                header = PaymentSigning.Header(overflow);
                expected = (400, X402Errors.InvalidPayload);
                break;
            case "bad-v":
                var sig = PaymentSigning.Sign(o, a, key);
                header = PaymentSigning.Header(PaymentSigning.V2Payload(accepted, a, sig[..^2] + "ff"));
                expected = (402, X402Errors.InvalidSignature);
                break;
            default:
                header = Convert.ToBase64String("{\"x402Version\":2,\"accepted\":"u8.ToArray());
                expected = (400, X402Errors.InvalidPayload);
                break;
        }

        using var response = await host.PostAsync(Body, new Dictionary<string, string> { [name] = header }, ct: ct);
        var body = JsonNode.Parse(await response.Content.ReadAsStringAsync(ct))!.AsObject();
        Assert.Equal(expected, ((int)response.StatusCode, body["error"]!.GetValue<string>()));
        if (expected.Item1 == 402)
        {
            Assert.True(response.Headers.Contains("PAYMENT-REQUIRED"));
        }

        Assert.Equal(0, host.Invocation.Calls);
        Assert.Equal(0, await host.Store.CountAsync(PaymentStates.Settled, ct));
        Assert.Equal(0, await host.Store.CountAsync(PaymentStates.Settling, ct));
        Assert.Empty(host.Sink.Lots);
    }

    /// <summary>
    /// Text that cannot be kept or a repeated name in the invoke body is 400 naming the field before the 402, so no
    /// payment is read, claimed or settled. The lone surrogate and the repeat threw (500); invalid UTF-8 became U+FFFD.
    /// </summary>
    [Fact]
    public async Task Invalid_text_or_a_repeated_name_in_the_body_is_400_before_any_payment_is_read()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var host = await PaymentHost.StartAsync("sqlite", Settings());
        var (required, _) = await host.ChallengeAsync(Body, ct);
        var a = PaymentSigning.Authorization(PaymentSigning.PayerKey, host.Options.PayTo, 1_000_000, 0, DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 60);
        var header = PaymentSigning.Header(PaymentSigning.V2Payload(required["accepts"]![0]!.AsObject(), a, PaymentSigning.Sign(host.Options, a, PaymentSigning.PayerKey)));
        var cases = new (string Field, byte[] Body)[]
        {
            ("prompt", System.Text.Encoding.UTF8.GetBytes("""{"prompt":"pay \ud800","model":"cheap"}""")),
            ("prompt", [.. "{\"prompt\":\"pay "u8, 0xff, .. "\",\"model\":\"cheap\"}"u8]),
            ("model", System.Text.Encoding.UTF8.GetBytes("""{"prompt":"pay","model":"cheap","model":"architect"}""")),

            // Requests the paid call would refuse: refused before the 402 (an unknown pool was priced as the default one).
            ("model", System.Text.Encoding.UTF8.GetBytes("""{"prompt":"pay","model":"nope"}""")),
            ("agent", System.Text.Encoding.UTF8.GetBytes("""{"prompt":"pay","model":"cheap","agent":"nft:a.b"}""")),
            ("stream", System.Text.Encoding.UTF8.GetBytes("""{"prompt":"pay","model":"cheap","stream":"yes"}""")),
        };
        var wrong = new List<string>();
        foreach (var (field, bytes) in cases)
        {
            foreach (var paid in new[] { false, true })
            {
                using var request = new HttpRequestMessage(HttpMethod.Post, PaymentsApi.InvokePath)
                {
                    Content = new ByteArrayContent(bytes) { Headers = { ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json") } },
                };
                if (paid)
                {
                    request.Headers.TryAddWithoutValidation(X402Headers.PaymentSignature, header);
                }

                using var response = await host.Http.SendAsync(request, ct);
                if (ProblemBodies.Mismatch(response.StatusCode, await response.Content.ReadAsStringAsync(ct), field) is { } miss)
                {
                    wrong.Add($"paid={paid} {miss}");
                }
            }
        }

        Assert.True(wrong.Count == 0, string.Join("; ", wrong));

        Assert.Equal(0, host.Invocation.Calls);
        foreach (var state in new[] { PaymentStates.Verified, PaymentStates.Settling, PaymentStates.Settled, PaymentStates.Failed })
        {
            Assert.Equal(0, await host.Store.CountAsync(state, ct));
        }

        // The authorization was never claimed: with a good body it is (the closed RPC port then refuses to pre-verify it).
        using var good = await host.PostAsync(Body, new Dictionary<string, string> { [X402Headers.PaymentSignature] = header }, ct: ct);
        Assert.NotEqual(400, (int)good.StatusCode);
        long rows = 0;
        foreach (var state in new[] { PaymentStates.Verified, PaymentStates.Settling, PaymentStates.Settled, PaymentStates.Failed })
        {
            rows += await host.Store.CountAsync(state, ct);
        }

        Assert.Equal(1, rows);
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Default_configuration_answers_402_out_of_the_box(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var host = await PaymentHost.StartAsync(engine, new Dictionary<string, string?>());
        using var response = await host.PostAsync(Body, ct: ct);
        Assert.Equal(402, (int)response.StatusCode);
        Assert.True(response.Headers.Contains("X-Price"));
    }
}
