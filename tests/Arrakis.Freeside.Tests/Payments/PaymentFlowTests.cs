using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Payments;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;

namespace Arrakis.Freeside.Tests.Payments;

/// <summary>Who may settle a payment, and what a failed payment leaves behind: a consistent row, its stored answer, no credit.</summary>
public sealed class PaymentFlowTests
{
    static readonly JsonObject Body = new() { ["prompt"] = "x402 payment test", ["model"] = "cheap" };

    /// <summary>
    /// The paid invoke outlived X402:RecoveryAfterSeconds and recovery failed the row as abandoned meanwhile: the request
    /// that comes back must not settle (the row is no longer its own), and answers with what the row says.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_payment_recovery_took_during_the_invoke_is_never_settled(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var (header, a, _) = await ChainPaymentTests.SignAsync(rig, Body, ct);
        rig.Host.Invocation.During = async (request, token) =>
        {
            await rig.Host.AgeAsync(request.PaymentId, RecoveryAndProofTests.Stale, token);
            await rig.Host.Recovery.RecoverOnceAsync(token);
        };

        using var response = await rig.Host.PostAsync(Body, ChainPaymentTests.V2(header), rig.Host.UserToken("community-race"), ct);
        var body = await ChainPaymentTests.JsonAsync(response, ct);
        Assert.True((502, "abandoned") == ((int)response.StatusCode, body["error"]?.GetValue<string>()), body.ToJsonString());
        Assert.False(response.Headers.Contains("PAYMENT-RESPONSE"));
        Assert.Equal(0, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.False(await rig.Chain.AuthorizationUsedAsync(a.From, a.Nonce));
        Assert.Empty(rig.Host.Sink.Lots);
        Assert.Equal(1, await rig.Host.Store.CountAsync(PaymentStates.Failed, ct));
        Assert.Equal(0, await rig.Host.Store.CountAsync(PaymentStates.Settled, ct));

        // The same payment again replays that answer.
        rig.Host.Invocation.During = null;
        using var again = await rig.Host.PostAsync(Body, ChainPaymentTests.V2(header), ct: ct);
        Assert.Equal((502, body.ToJsonString()), ((int)again.StatusCode, (await ChainPaymentTests.JsonAsync(again, ct)).ToJsonString()));
        Assert.Equal(0, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Equal(1, rig.Host.Invocation.Calls);
    }

    /// <summary>An invoke that fails without an error status is answered 502, and the stored answer a replay gets is that same 502.</summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_failed_invoke_is_answered_the_same_live_and_on_replay(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var failing = new JsonObject { ["prompt"] = "please soft-failure", ["model"] = "cheap" };
        var (header, _, _) = await ChainPaymentTests.SignAsync(rig, failing, ct);

        using var first = await rig.Host.PostAsync(failing, ChainPaymentTests.V2(header), ct: ct);
        var firstBody = await first.Content.ReadAsStringAsync(ct);
        Assert.Equal(502, (int)first.StatusCode);
        using var replay = await rig.Host.PostAsync(failing, ChainPaymentTests.V2(header), ct: ct);
        Assert.Equal((502, firstBody), ((int)replay.StatusCode, await replay.Content.ReadAsStringAsync(ct)));
        Assert.Equal(1, rig.Host.Invocation.Calls);
        Assert.Equal(0, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Empty(rig.Host.Sink.Lots);
    }

    /// <summary>
    /// Settlement fails after the paid call ran (the facilitator is gone by then): the 402 carries PAYMENT-RESPONSE with
    /// success false and the reason, and a replay of the same payment gets that header too, not just the stored body.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_failed_settlement_replays_with_its_settlement_header(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Facilitator", ct);
        var (header, _, _) = await ChainPaymentTests.SignAsync(rig, Body, ct);
        rig.Host.Invocation.During = (_, _) =>
        {
            NodeTool.Kill(rig.Facilitator!);
            return Task.CompletedTask;
        };

        using var first = await rig.Host.PostAsync(Body, ChainPaymentTests.V2(header), ct: ct);
        var firstBody = await first.Content.ReadAsStringAsync(ct);
        Assert.True(402 == (int)first.StatusCode, firstBody);
        var live = X402Codec.DecodeNode(first.Headers.GetValues("PAYMENT-RESPONSE").Single())!.AsObject();
        Assert.False(live["success"]!.GetValue<bool>());
        Assert.Equal(X402Errors.UnexpectedSettleError, live["errorReason"]!.GetValue<string>());

        rig.Host.Invocation.During = null;
        using var replay = await rig.Host.PostAsync(Body, ChainPaymentTests.V2(header), ct: ct);
        Assert.Equal((402, firstBody), ((int)replay.StatusCode, await replay.Content.ReadAsStringAsync(ct)));
        Assert.True(replay.Headers.TryGetValues("PAYMENT-RESPONSE", out var values), "the replay has no PAYMENT-RESPONSE header");
        Assert.Equal(live.ToJsonString(), X402Codec.DecodeNode(values.Single())!.ToJsonString());
        Assert.Equal(1, rig.Host.Invocation.Calls);
        Assert.Equal(0, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Empty(rig.Host.Sink.Lots);
    }

    /// <summary>A facilitator that accepts the connection and never answers costs X402:FacilitatorTimeoutSeconds, not a minute.</summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_silent_facilitator_times_out_after_X402_FacilitatorTimeoutSeconds(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        using var silent = new TcpListener(IPAddress.Loopback, 0); // connections queue in the backlog and are never answered
        silent.Start();
        await using var host = await PaymentHost.StartAsync(engine, new Dictionary<string, string?>
        {
            ["X402:Settler"] = "Facilitator",
            ["X402:FacilitatorUrl"] = $"http://127.0.0.1:{((IPEndPoint)silent.LocalEndpoint).Port}",
            ["X402:FacilitatorTimeoutSeconds"] = "2",
            ["X402:RpcUrl"] = $"http://127.0.0.1:{TestStorage.FreePort()}",
        });
        var header = await PayTheChallengeAsync(host, ct);

        using var bounded = CancellationTokenSource.CreateLinkedTokenSource(ct);
        bounded.CancelAfter(TimeSpan.FromSeconds(30));
        var clock = Stopwatch.StartNew();
        using var response = await host.PostAsync(Body, ChainPaymentTests.V2(header), ct: bounded.Token);
        var body = await ChainPaymentTests.JsonAsync(response, ct);
        Assert.Equal((502, X402Errors.UnexpectedVerifyError), ((int)response.StatusCode, body["error"]!.GetValue<string>()));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"took {clock.Elapsed}");
        Assert.Equal(0, host.Invocation.Calls);
        Assert.Equal(1, await host.Store.CountAsync(PaymentStates.Failed, ct));
    }

    /// <summary>A v2 payment header for exactly the amount the host's 402 asks for <see cref="Body"/>, signed by the test payer.</summary>
    static async Task<string> PayTheChallengeAsync(PaymentHost host, CancellationToken ct)
    {
        var (required, _) = await host.ChallengeAsync(Body, ct);
        var accepted = required["accepts"]![0]!.AsObject();
        var a = PaymentSigning.Authorization(PaymentSigning.PayerKey, host.Options.PayTo, long.Parse(accepted["amount"]!.GetValue<string>()), 0,
            DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 120);
        return PaymentSigning.Header(PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(host.Options, a, PaymentSigning.PayerKey)));
    }

    /// <summary>
    /// A facilitator answers with fields of the wrong JSON type ("isValid":"yes", "success":"true"). Reading them threw
    /// and the paid request answered 500. Now a /verify like that is a refusal (402, nothing run), and a /settle like that
    /// says nothing definite: the payment stays settling (503 settlement_pending) for recovery, never failed while the
    /// facilitator may have moved the money.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_facilitator_answer_with_fields_of_the_wrong_type_is_a_refusal_or_pending_never_a_500(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        foreach (var (verify, settle, status, error, state) in new[]
        {
            ("""{"isValid":"yes"}""", """{"success":true}""", 402, X402Errors.UnexpectedVerifyError, PaymentStates.Failed),
            ("""{"isValid":true}""", """{"success":"true","transaction":"0x01"}""", 503, X402Errors.SettlementPending, PaymentStates.Settling),
        })
        {
            var builder = WebApplication.CreateSlimBuilder();
            builder.WebHost.UseUrls("http://127.0.0.1:0");
            await using var facilitator = builder.Build();
            facilitator.MapPost("/verify", () => Microsoft.AspNetCore.Http.Results.Text(verify, "application/json"));
            facilitator.MapPost("/settle", () => Microsoft.AspNetCore.Http.Results.Text(settle, "application/json"));
            await facilitator.StartAsync(ct);
            await using var host = await PaymentHost.StartAsync(engine, new Dictionary<string, string?>
            {
                ["X402:Settler"] = "Facilitator",
                ["X402:FacilitatorUrl"] = facilitator.Urls.Single(),
                ["X402:RpcUrl"] = $"http://127.0.0.1:{TestStorage.FreePort()}",
            });
            var header = await PayTheChallengeAsync(host, ct);

            using var response = await host.PostAsync(Body, ChainPaymentTests.V2(header), ct: ct);
            var body = await ChainPaymentTests.JsonAsync(response, ct);
            Assert.True(((int)response.StatusCode, body["error"]?.GetValue<string>()) == (status, error), $"{verify} {settle}: {(int)response.StatusCode} {body.ToJsonString()}");
            Assert.Equal(1, await host.Store.CountAsync(state, ct));
            Assert.Empty(host.Sink.Lots);
            await facilitator.StopAsync(ct);
        }
    }
}
