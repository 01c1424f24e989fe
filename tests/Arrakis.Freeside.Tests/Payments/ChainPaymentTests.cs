using System.Text.Json.Nodes;
using Arrakis.Freeside.Payments;

namespace Arrakis.Freeside.Tests.Payments;

/// <summary>End to end on a local anvil chain: 402 → pay → 200 with a credit note, balances moved on chain.</summary>
public sealed class ChainPaymentTests
{
    const long Cost = 400;
    const long Funds = 1_000_000;
    static readonly JsonObject Body = new() { ["prompt"] = "x402 payment test", ["model"] = "cheap" };

    internal sealed record Rig(AnvilChain Chain, PaymentHost Host, string PayTo, string PayerKey, System.Diagnostics.Process? Facilitator) : IAsyncDisposable
    {
        public string Payer => PaymentSigning.AddressOf(PayerKey);

        public async ValueTask DisposeAsync()
        {
            await Host.DisposeAsync();
            if (Facilitator is not null)
            {
                NodeTool.Kill(Facilitator);
            }

            await Chain.DisposeAsync();
        }
    }

    /// <param name="rpcUrl">Where freeside reaches the chain, given the chain (a proxy in front of it); the chain itself by default.</param>
    internal static async Task<Rig> StartAsync(string engine, string settler, CancellationToken ct, Dictionary<string, string?>? extra = null,
        Func<AnvilChain, string>? rpcUrl = null)
    {
        var chain = await AnvilChain.StartAsync(ct);
        System.Diagnostics.Process? facilitator = null;
        try
        {
            var payTo = PaymentSigning.AddressOf(PaymentSigning.FreshKey());
            var payerKey = PaymentSigning.FreshKey();
            await chain.MintAsync(PaymentSigning.AddressOf(payerKey), Funds);
            var settings = new Dictionary<string, string?>
            {
                ["X402:PayTo"] = payTo,
                ["X402:RpcUrl"] = rpcUrl?.Invoke(chain) ?? chain.RpcUrl,
                ["X402:Settler"] = settler,
            };
            if (settler == "Direct")
            {
                settings["X402:RelayerKey"] = PaymentSigning.RelayerKey;
            }
            else
            {
                var port = TestStorage.FreePort();
                facilitator = await NodeTool.StartAsync(AnvilChain.ToolsDir, "facilitator.mjs", new Dictionary<string, string>
                {
                    ["PORT"] = port.ToString(), ["RPC_URL"] = chain.RpcUrl, ["FACILITATOR_KEY"] = PaymentSigning.FacilitatorKey,
                }, "listening", ct);
                settings["X402:FacilitatorUrl"] = $"http://127.0.0.1:{port}";
            }

            foreach (var (k, v) in extra ?? [])
            {
                settings[k] = v;
            }

            var host = await PaymentHost.StartAsync(engine, settings, Cost);
            return new Rig(chain, host, payTo, payerKey, facilitator);
        }
        catch
        {
            if (facilitator is not null)
            {
                NodeTool.Kill(facilitator);
            }

            await chain.DisposeAsync();
            throw;
        }
    }

    internal static async Task<(string Header, Eip3009Authorization Authorization, long Amount)> SignAsync(Rig rig, JsonObject body, CancellationToken ct,
        long extra = 0, string? nonce = null, string? paymentIdentifier = null)
    {
        var (required, _) = await rig.Host.ChallengeAsync(body, ct);
        var accepted = required["accepts"]![0]!.AsObject();
        var amount = long.Parse(accepted["amount"]!.GetValue<string>());
        var a = PaymentSigning.Authorization(rig.PayerKey, rig.PayTo, amount + extra, 0, DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 60, nonce);
        var header = PaymentSigning.Header(PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(rig.Host.Options, a, rig.PayerKey), paymentIdentifier));
        return (header, a, amount);
    }

    internal static Dictionary<string, string> V2(string header) => new() { ["PAYMENT-SIGNATURE"] = header };

    internal static async Task<JsonObject> JsonAsync(HttpResponseMessage response, CancellationToken ct) =>
        JsonNode.Parse(await response.Content.ReadAsStringAsync(ct))!.AsObject();

    public static TheoryData<string, string> EnginesAndSettlers()
    {
        var data = new TheoryData<string, string>();
        foreach (var engine in TestStorage.Engines())
        {
            data.Add(engine.Data, "Direct");
            data.Add(engine.Data, "Facilitator");
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(EnginesAndSettlers))]
    public async Task Pay_settles_on_chain_and_issues_one_credit_note(string engine, string settler)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await StartAsync(engine, settler, ct);
        var (header, a, amount) = await SignAsync(rig, Body, ct, extra: 5_000);
        var token = rig.Host.UserToken("community-a");

        using var response = await rig.Host.PostAsync(Body, V2(header), token, ct);
        var body = await JsonAsync(response, ct);
        Assert.True(200 == (int)response.StatusCode, body.ToJsonString());
        Assert.StartsWith("paid answer to:", body["content"]!.GetValue<string>());

        var settlement = X402Codec.DecodeNode(response.Headers.GetValues("PAYMENT-RESPONSE").Single())!.AsObject();
        Assert.True(settlement["success"]!.GetValue<bool>());
        Assert.Equal("eip155:84532", settlement["network"]!.GetValue<string>());
        Assert.Equal(rig.Payer, settlement["payer"]!.GetValue<string>(), ignoreCase: true);
        var tx = settlement["transaction"]!.GetValue<string>();
        Assert.Equal(1, (int)(await rig.Chain.ReceiptStatusAsync(tx)).Value);

        var note = body["creditNote"]!.AsObject();
        var paid = amount + 5_000;
        Assert.Equal(paid - Cost, note["amountMicro"]!.GetValue<long>());
        Assert.Equal(tx, note["transaction"]!.GetValue<string>());
        Assert.Equal("community-a", note["communityId"]!.GetValue<string>());
        var lotId = note["lotId"]!.GetValue<string>();

        // Balances moved on chain, and the credit lot reached the ledger sink exactly once.
        Assert.Equal(paid, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Equal(Funds - paid, await rig.Chain.BalanceAsync(rig.Payer));
        Assert.True(await rig.Chain.AuthorizationUsedAsync(a.From, a.Nonce));
        var lot = Assert.Single(rig.Host.Sink.Lots).Value;
        Assert.Equal((lotId, "community-a", paid - Cost, tx), (lot.LotId, lot.CommunityId, lot.AmountMicro, lot.Transaction));

        // The same payment again replays the stored result: no second settlement, no second note.
        using var again = await rig.Host.PostAsync(Body, V2(header), rig.Host.UserToken("community-a"), ct);
        var againBody = await JsonAsync(again, ct);
        Assert.Equal(200, (int)again.StatusCode);
        Assert.Equal(note["id"]!.GetValue<string>(), againBody["creditNote"]!["id"]!.GetValue<string>());
        Assert.Single(rig.Host.Sink.Lots);
        Assert.Equal(1, rig.Host.Invocation.Calls);
        Assert.Equal(paid, await rig.Chain.BalanceAsync(rig.PayTo));
    }

    /// <summary>
    /// A payment without a bearer token pays for its call, but its remainder has no community to go to: the note says
    /// nothing was credited and how much was not, and no lot is granted.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_payment_without_a_token_says_its_remainder_was_not_credited(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await StartAsync(engine, "Direct", ct);
        var (header, _, amount) = await SignAsync(rig, Body, ct, extra: 5_000);

        using var response = await rig.Host.PostAsync(Body, V2(header), token: null, ct);
        var body = await JsonAsync(response, ct);
        Assert.True(200 == (int)response.StatusCode, body.ToJsonString());
        var note = body["creditNote"]!.AsObject();
        Assert.Equal(0, note["amountMicro"]!.GetValue<long>());
        Assert.Equal(amount + 5_000 - Cost, note["uncreditedMicro"]!.GetValue<long>());
        Assert.Null(note["lotId"]);
        Assert.Null(note["communityId"]);
        Assert.Contains("not credited", note["detail"]!.GetValue<string>(), StringComparison.Ordinal);
        Assert.Empty(rig.Host.Sink.Lots);
        Assert.Equal(amount + 5_000, await rig.Chain.BalanceAsync(rig.PayTo));
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Thirty_two_identical_submissions_settle_once_with_one_credit_note(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await StartAsync(engine, "Direct", ct);
        var (header, _, amount) = await SignAsync(rig, Body, ct);

        var responses = await Task.WhenAll(Enumerable.Range(0, 32).Select(async _ =>
        {
            using var r = await rig.Host.PostAsync(Body, V2(header), rig.Host.UserToken("community-b"), ct);
            return ((int)r.StatusCode, await JsonAsync(r, ct));
        }));

        Assert.All(responses, r => Assert.True(r.Item1 == 200 || (r.Item1 == 409 && r.Item2["error"]!.GetValue<string>() == X402Errors.DuplicateSettlement), r.Item2.ToJsonString()));
        var notes = responses.Where(r => r.Item1 == 200).Select(r => r.Item2["creditNote"]!["id"]!.GetValue<string>()).Distinct().ToList();
        Assert.Single(notes);
        Assert.Equal(1, rig.Host.Invocation.Calls);
        Assert.Single(rig.Host.Sink.Lots);
        Assert.Equal(amount, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Equal(1, await rig.Host.Store.CountAsync(PaymentStates.Settled, ct));
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_failed_paid_invoke_settles_nothing_and_the_nonce_is_then_terminal(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await StartAsync(engine, "Direct", ct);
        var failing = new JsonObject { ["prompt"] = "please provider-error", ["model"] = "cheap" };
        var (header, a, _) = await SignAsync(rig, failing, ct);

        using var response = await rig.Host.PostAsync(failing, V2(header), ct: ct);
        Assert.Equal(502, (int)response.StatusCode);
        Assert.False(response.Headers.Contains("PAYMENT-RESPONSE"));
        Assert.Equal(0, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Equal(Funds, await rig.Chain.BalanceAsync(rig.Payer));
        Assert.False(await rig.Chain.AuthorizationUsedAsync(a.From, a.Nonce));
        Assert.Empty(rig.Host.Sink.Lots);
        Assert.Equal(1, await rig.Host.Store.CountAsync(PaymentStates.Failed, ct));

        // Reusing that nonce in a different authorization is refused with its own code, and still nothing settles.
        var (reuse, _, _) = await SignAsync(rig, Body, ct, extra: 1, nonce: a.Nonce);
        using var reused = await rig.Host.PostAsync(Body, V2(reuse), ct: ct);
        Assert.Equal(409, (int)reused.StatusCode);
        Assert.Equal(X402Errors.NonceUsed, (await JsonAsync(reused, ct))["error"]!.GetValue<string>());
        Assert.Equal(1, rig.Host.Invocation.Calls);
        Assert.Equal(0, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Equal(0, await rig.Host.Store.CountAsync(PaymentStates.Settled, ct));
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_settled_nonce_reused_in_a_new_authorization_is_refused(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await StartAsync(engine, "Direct", ct);
        var (header, a, amount) = await SignAsync(rig, Body, ct);
        using var first = await rig.Host.PostAsync(Body, V2(header), ct: ct);
        Assert.Equal(200, (int)first.StatusCode);

        var (reuse, _, _) = await SignAsync(rig, Body, ct, extra: 10, nonce: a.Nonce);
        using var second = await rig.Host.PostAsync(Body, V2(reuse), ct: ct);
        Assert.Equal(409, (int)second.StatusCode);
        Assert.Equal(X402Errors.NonceUsed, (await JsonAsync(second, ct))["error"]!.GetValue<string>());
        Assert.Equal(amount, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Equal(1, rig.Host.Invocation.Calls);
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Payment_identifier_replays_the_same_payload_and_conflicts_on_a_different_one(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await StartAsync(engine, "Direct", ct);
        const string id = "pay_0123456789abcdef0123";
        var (header, _, amount) = await SignAsync(rig, Body, ct, paymentIdentifier: id);
        using var first = await rig.Host.PostAsync(Body, V2(header), rig.Host.UserToken("community-c"), ct);
        Assert.Equal(200, (int)first.StatusCode);
        var firstBody = await first.Content.ReadAsStringAsync(ct);

        using var same = await rig.Host.PostAsync(Body, V2(header), ct: ct);
        Assert.Equal(200, (int)same.StatusCode);
        Assert.Equal(firstBody, await same.Content.ReadAsStringAsync(ct));

        var (different, _, _) = await SignAsync(rig, Body, ct, paymentIdentifier: id);
        using var conflict = await rig.Host.PostAsync(Body, V2(different), ct: ct);
        Assert.Equal(409, (int)conflict.StatusCode);
        Assert.Equal(X402Errors.PaymentIdentifierConflict, (await JsonAsync(conflict, ct))["error"]!.GetValue<string>());
        Assert.Equal(amount, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Single(rig.Host.Sink.Lots);
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_payer_without_funds_is_refused_before_the_invoke_runs(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await StartAsync(engine, "Direct", ct);
        var (required, _) = await rig.Host.ChallengeAsync(Body, ct);
        var accepted = required["accepts"]![0]!.AsObject();
        var broke = PaymentSigning.FreshKey();
        var a = PaymentSigning.Authorization(broke, rig.PayTo, long.Parse(accepted["amount"]!.GetValue<string>()), 0, DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 60);
        var header = PaymentSigning.Header(PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(rig.Host.Options, a, broke)));
        using var response = await rig.Host.PostAsync(Body, V2(header), ct: ct);
        Assert.Equal(402, (int)response.StatusCode);
        Assert.Equal(X402Errors.InsufficientFunds, (await JsonAsync(response, ct))["error"]!.GetValue<string>());
        Assert.Equal(0, rig.Host.Invocation.Calls);
    }
}
