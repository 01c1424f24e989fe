using System.Text.Json.Nodes;
using Arrakis.Freeside.Payments;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Nethereum.Hex.HexConvertors.Extensions;

namespace Arrakis.Freeside.Tests.Payments;

/// <summary>Crash recovery of persisted settlement states, and the legacy X-Payment-Proof path, on anvil.</summary>
public sealed class RecoveryAndProofTests
{
    static readonly JsonObject Body = new() { ["prompt"] = "x402 payment test", ["model"] = "cheap" };

    /// <summary>Older than any X402:RecoveryAfterSeconds the tests run with, so recovery takes the row.</summary>
    internal static readonly TimeSpan Stale = TimeSpan.FromHours(1);

    internal static async Task<PaymentRow> CrashedRowAsync(ChainPaymentTests.Rig rig, string state, CancellationToken ct)
    {
        var (required, _) = await rig.Host.ChallengeAsync(Body, ct);
        var accepted = required["accepts"]![0]!.AsObject();
        var amount = long.Parse(accepted["amount"]!.GetValue<string>());
        var a = PaymentSigning.Authorization(rig.PayerKey, rig.PayTo, amount, 0, DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 60);
        var payload = PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(rig.Host.Options, a, rig.PayerKey));
        var row = new PaymentRow
        {
            Id = "pay_crash_" + Guid.NewGuid().ToString("N")[..8],
            X402Version = 2,
            Network = "eip155:84532",
            Asset = X402Options.BaseSepoliaUsdc.ToLowerInvariant(),
            Payer = a.From.ToLowerInvariant(),
            Nonce = a.Nonce,
            PayloadHash = a.Nonce,
            PayloadJson = payload.ToJsonString(),
            RequirementJson = accepted.ToJsonString(),
            AmountRequiredMicro = amount,
            ValueMicro = amount,
            CommunityId = "community-crash",
            State = PaymentStates.Verified,
        };
        var (inserted, _) = await rig.Host.Store.ClaimAsync(row, ct);
        Assert.True(inserted);
        if (state == PaymentStates.Settling)
        {
            // The process "crashed" after the paid invoke succeeded and before settlement finished.
            Assert.True(await rig.Host.Store.MarkSettlingAsync(row.Id, 300, """{"content":"answer"}""", ct));
        }

        return row;
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Recovery_settles_a_row_left_in_settling_and_fails_a_stale_verified_one(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var settling = await CrashedRowAsync(rig, PaymentStates.Settling, ct);
        var verified = await CrashedRowAsync(rig, PaymentStates.Verified, ct);
        await rig.Host.AgeAsync(settling.Id, Stale, ct);
        await rig.Host.AgeAsync(verified.Id, Stale, ct);

        var touched = await rig.Host.App.Services.GetRequiredService<SettlementRecovery>().RecoverOnceAsync(ct);
        Assert.True(touched >= 2);

        var settled = await rig.Host.Store.GetAsync(settling.Id, ct);
        Assert.Equal(PaymentStates.Settled, settled!.State);
        Assert.Equal(1, (int)(await rig.Chain.ReceiptStatusAsync(settled.TxHash!)).Value);
        Assert.Equal(settling.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo));
        var lot = Assert.Single(rig.Host.Sink.Lots).Value;
        Assert.Equal(("community-crash", settling.ValueMicro - 300), (lot.CommunityId, lot.AmountMicro));
        Assert.Equal(PaymentStates.Failed, (await rig.Host.Store.GetAsync(verified.Id, ct))!.State);

        // A second pass finds nothing left to do and never pays twice.
        await rig.Host.App.Services.GetRequiredService<SettlementRecovery>().RecoverOnceAsync(ct);
        Assert.Equal(settling.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Single(rig.Host.Sink.Lots);
    }

    /// <summary>
    /// The direct settler signed, recorded and broadcast the transaction, it was mined, and freeside crashed before marking
    /// the payment settled: recovery rebroadcasts the recorded transaction, which the chain already has, and must settle
    /// the payment with that transaction and its one credit note, not fail a payment whose money moved.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Recovery_settles_a_direct_settlement_that_was_mined_before_the_crash(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var row = await CrashedRowAsync(rig, PaymentStates.Settling, ct);

        // What the worker did before the crash: signed, recorded, broadcast; the transaction was mined.
        var flow = rig.Host.App.Services.GetRequiredService<PaymentFlow>();
        var settler = rig.Host.App.Services.GetRequiredService<IPaymentSettler>();
        var landed = await settler.SettleAsync(flow.RequestFor(row), (tx, raw) => rig.Host.Store.RecordTransactionAsync(row.Id, tx, raw, ct), ct);
        Assert.True(landed.Success, landed.ErrorReason);
        Assert.Equal(row.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo));
        await rig.Host.AgeAsync(row.Id, Stale, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var settled = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.True(PaymentStates.Settled == settled.State, $"{settled.State} {settled.Error}");
        Assert.Equal(landed.Transaction, settled.TxHash);
        Assert.Equal(row.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo)); // paid once, never twice
        var lot = Assert.Single(rig.Host.Sink.Lots).Value;
        Assert.Equal(("community-crash", row.ValueMicro - 300, landed.Transaction), (lot.CommunityId, lot.AmountMicro, lot.Transaction));
    }

    /// <summary>
    /// Recovery rebroadcasts a direct settlement that was mined before the crash, and the relayer lock's database call
    /// fails while it waits for another replica's submission (here its connection is terminated; a command timeout or a
    /// failover does the same). Nothing was sent this time, but the recorded transaction was sent before and moved the
    /// money: the payment must stay settling for the next pass. It failed for good instead (the database answered the
    /// failure's write), and the payer had paid for an answer withheld with no credit note.
    /// </summary>
    [Fact]
    public async Task Recovery_that_cannot_take_the_relayer_lock_leaves_a_broadcast_direct_settlement_settling()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync("postgres", "Direct", ct);
        var row = await CrashedRowAsync(rig, PaymentStates.Settling, ct);
        var flow = rig.Host.App.Services.GetRequiredService<PaymentFlow>();
        var settler = rig.Host.App.Services.GetRequiredService<IPaymentSettler>();
        var landed = await settler.SettleAsync(flow.RequestFor(row), (tx, raw) => rig.Host.Store.RecordTransactionAsync(row.Id, tx, raw, ct), ct);
        Assert.True(landed.Success, landed.ErrorReason);
        Assert.Equal(row.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo)); // the payer paid
        await rig.Host.AgeAsync(row.Id, Stale, ct);

        // Another replica holds the relayer lock.
        await using var other = new Npgsql.NpgsqlConnection(rig.Host.App.Configuration["ConnectionStrings:Freeside"]);
        await other.OpenAsync(ct);
        var relayer = new Nethereum.Web3.Accounts.Account(PaymentSigning.RelayerKey).Address.ToLowerInvariant();
        await using (var hold = new Npgsql.NpgsqlCommand("SELECT pg_advisory_lock(hashtext(@key))", other))
        {
            hold.Parameters.AddWithValue("key", $"x402-relayer:{rig.Host.Options.ChainId}:{relayer}");
            await hold.ExecuteNonQueryAsync(ct);
        }

        var recovering = rig.Host.Recovery.RecoverOnceAsync(ct);
        var waited = System.Diagnostics.Stopwatch.StartNew();
        object? pid;
        await using (var find = new Npgsql.NpgsqlCommand(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' AND pid <> pg_backend_pid()", other))
        {
            while ((pid = await find.ExecuteScalarAsync(ct)) is null or DBNull)
            {
                Assert.True(waited.Elapsed < TimeSpan.FromSeconds(20), "recovery never waited for the relayer lock");
                await Task.Delay(20, ct);
            }
        }

        await using (var kill = new Npgsql.NpgsqlCommand($"SELECT pg_terminate_backend({pid})", other))
        {
            await kill.ExecuteNonQueryAsync(ct);
        }

        await recovering;
        var during = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.True(PaymentStates.Settling == during.State, $"{during.State} {during.Error}");

        // The lock is free again: the next pass settles the payment with its transaction and one credit note.
        await using (var release = new Npgsql.NpgsqlCommand("SELECT pg_advisory_unlock_all()", other))
        {
            await release.ExecuteNonQueryAsync(ct);
        }

        await rig.Host.AgeAsync(row.Id, Stale, ct);
        await rig.Host.Recovery.RecoverOnceAsync(ct);
        var settled = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.True(PaymentStates.Settled == settled.State, $"{settled.State} {settled.Error}");
        Assert.Equal(landed.Transaction, settled.TxHash);
        Assert.Equal(row.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo)); // paid once
        var lot = Assert.Single(rig.Host.Sink.Lots).Value;
        Assert.Equal(("community-crash", row.ValueMicro - 300, landed.Transaction), (lot.CommunityId, lot.AmountMicro, lot.Transaction));
    }

    /// <summary>
    /// The facilitator settled, then freeside crashed before recording it: on recovery the facilitator refuses the spent
    /// authorization, and freeside finds the transaction on chain instead of failing a payment that was made.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Recovery_finds_a_facilitator_settlement_that_landed_before_the_crash_and_issues_one_credit_note(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Facilitator", ct);
        var row = await CrashedRowAsync(rig, PaymentStates.Settling, ct);

        // What the facilitator did before the crash: it settled this very payload on chain.
        var tx = await SettleThroughFacilitatorAsync(rig, row, ct);
        Assert.Equal(row.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo));
        await rig.Host.AgeAsync(row.Id, Stale, ct);

        await rig.Host.App.Services.GetRequiredService<SettlementRecovery>().RecoverOnceAsync(ct);

        var settled = await rig.Host.Store.GetAsync(row.Id, ct);
        Assert.Equal(PaymentStates.Settled, settled!.State);
        Assert.Equal(tx, settled.TxHash);
        Assert.Equal(row.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo)); // paid once, never twice
        var lot = Assert.Single(rig.Host.Sink.Lots).Value;
        Assert.Equal(("community-crash", row.ValueMicro - 300), (lot.CommunityId, lot.AmountMicro));

        await rig.Host.App.Services.GetRequiredService<SettlementRecovery>().RecoverOnceAsync(ct);
        Assert.Single(rig.Host.Sink.Lots);
    }

    /// <summary>
    /// The direct settler broadcast the settlement, and the RPC connection dropped while it waited for the receipt: the
    /// transaction is out there, so the payment must stay settling (503 settlement_pending), not fail for good. Once the
    /// chain is back and the transaction mined, recovery settles it with one credit note.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_direct_settlement_whose_rpc_drops_after_the_broadcast_stays_pending_and_recovery_credits_it(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        TcpProxy? proxy = null;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct, rpcUrl: chain =>
        {
            proxy = new TcpProxy("127.0.0.1", new Uri(chain.RpcUrl).Port);
            return $"http://127.0.0.1:{proxy.Port}";
        });
        await using var proxyScope = proxy!;
        var (header, a, amount) = await ChainPaymentTests.SignAsync(rig, Body, ct);
        // From the paid call on, blocks wait for the test, so the settlement sits in the mempool while freeside polls.
        rig.Host.Invocation.During = (_, token) => rig.Chain.SetAutomineAsync(false, token);

        var posting = rig.Host.PostAsync(Body, ChainPaymentTests.V2(header), rig.Host.UserToken("community-rpc"), ct);
        var web3 = new Nethereum.Web3.Web3(rig.Chain.RpcUrl);
        string? tx = null;
        for (var i = 0; i < 300 && tx is null; i++)
        {
            await Task.Delay(50, ct);
            var recorded = (await rig.Host.Store.ListRecoverableAsync(long.MaxValue, ct)).SingleOrDefault()?.TxHash;
            if (recorded is not null && await web3.Eth.Transactions.GetTransactionByHash.SendRequestAsync(recorded) is not null)
            {
                tx = recorded;
            }
        }

        Assert.NotNull(tx);
        proxy!.Cut();
        using var response = await posting;
        var body = await ChainPaymentTests.JsonAsync(response, ct);
        await rig.Chain.MineAsync(ct);
        await rig.Chain.SetAutomineAsync(true, ct);
        proxy.Restore();
        Assert.Equal(amount, await rig.Chain.BalanceAsync(rig.PayTo)); // the broadcast transaction landed: the payer paid
        Assert.True(await rig.Chain.AuthorizationUsedAsync(a.From, a.Nonce));
        Assert.True((503, X402Errors.SettlementPending) == ((int)response.StatusCode, body["error"]?.GetValue<string>()), body.ToJsonString());
        var row = Assert.Single(await rig.Host.Store.ListRecoverableAsync(long.MaxValue, ct));
        Assert.Equal((PaymentStates.Settling, tx), (row.State, row.TxHash));

        await rig.Host.AgeAsync(row.Id, Stale, ct);
        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var settled = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.True((PaymentStates.Settled, tx) == (settled.State, settled.TxHash), $"{settled.State} {settled.Error}");
        var lot = Assert.Single(rig.Host.Sink.Lots).Value;
        Assert.Equal(("community-rpc", amount - 400, tx), (lot.CommunityId, lot.AmountMicro, lot.Transaction));
        Assert.Equal(amount, await rig.Chain.BalanceAsync(rig.PayTo));
    }

    /// <summary>
    /// The facilitator settled, then freeside was down longer than X402:SettlementLookbackBlocks: on recovery the
    /// authorization is used on chain but its AuthorizationUsed event is out of the window. The payer paid, so the payment
    /// must not fail (as it did): it stays settling, an operator is told to raise the window, and a replica with a wider
    /// one settles it with the facilitator's transaction and one credit note.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_settlement_older_than_the_lookback_window_stays_settling_and_is_flagged_until_a_wider_window_finds_it(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Facilitator", ct, new Dictionary<string, string?> { ["X402:SettlementLookbackBlocks"] = "5" });
        var row = await CrashedRowAsync(rig, PaymentStates.Settling, ct);
        var tx = await SettleThroughFacilitatorAsync(rig, row, ct);
        await rig.Chain.MineAsync(20, ct); // the outage outlasted the window
        await rig.Host.AgeAsync(row.Id, Stale, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var kept = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.True(PaymentStates.Settling == kept.State, $"{kept.State} {kept.Error}");
        Assert.Empty(rig.Host.Sink.Lots);
        var flag = Assert.Single(rig.Host.Logs.WithEvent("SettlementUnlocated"));
        Assert.Equal((Microsoft.Extensions.Logging.LogLevel.Error, row.Id), (flag.Level, flag.Properties["PaymentId"]));
        Assert.Contains("X402__SettlementLookbackBlocks", flag.Message);

        var config = rig.Host.App.Configuration;
        await using var wider = await PaymentHost.StartAsync(engine, new Dictionary<string, string?>
        {
            ["LOA_DATA_DIR"] = config["LOA_DATA_DIR"],
            ["ConnectionStrings:Freeside"] = config["ConnectionStrings:Freeside"],
            ["X402:PayTo"] = rig.PayTo,
            ["X402:RpcUrl"] = rig.Chain.RpcUrl,
            ["X402:Settler"] = "Facilitator",
            ["X402:FacilitatorUrl"] = rig.Host.Options.FacilitatorUrl,
            ["X402:SettlementLookbackBlocks"] = "100",
        });
        await wider.AgeAsync(row.Id, Stale, ct);
        await wider.Recovery.RecoverOnceAsync(ct);

        var settled = (await wider.Store.GetAsync(row.Id, ct))!;
        Assert.True((PaymentStates.Settled, tx) == (settled.State, settled.TxHash), $"{settled.State} {settled.Error}");
        var lot = Assert.Single(wider.Sink.Lots).Value;
        Assert.Equal(("community-crash", row.ValueMicro - 300, tx), (lot.CommunityId, lot.AmountMicro, lot.Transaction));
        Assert.Empty(rig.Host.Sink.Lots);
        Assert.Equal(row.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo)); // paid once
    }

    /// <summary>
    /// The payer cancelled the authorization (EIP-3009 cancelAuthorization) before a crashed settlement was retried: its
    /// nonce is used on chain as after a transfer, but no money moved, and the AuthorizationCanceled event says so. Recovery
    /// fails the payment without credit (it does not wait for a transfer that can never come), and nothing is logged as unlocated.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Recovery_fails_a_payment_whose_payer_cancelled_the_authorization(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Facilitator", ct);
        var row = await CrashedRowAsync(rig, PaymentStates.Settling, ct);
        await rig.Chain.CancelAuthorizationAsync(row.Payer, row.Nonce, PaymentSigning.SignCancel(rig.Host.Options, row.Nonce, rig.PayerKey));
        Assert.True(await rig.Chain.AuthorizationUsedAsync(row.Payer, row.Nonce));
        await rig.Host.AgeAsync(row.Id, Stale, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var failed = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.Equal((PaymentStates.Failed, (string?)null), (failed.State, failed.CreditNoteId));
        Assert.Empty(rig.Host.Sink.Lots);
        Assert.Equal(0, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Empty(rig.Host.Logs.WithEvent("SettlementUnlocated"));
    }

    /// <summary>
    /// The facilitator broadcast the settlement, but it was not mined before X402:FacilitatorTimeoutSeconds ran out (a slow
    /// chain): the outcome is unknown, so the payment must stay settling (503 settlement_pending), not fail for good while
    /// its transaction is still in the mempool. Once it is mined, recovery settles it with one credit note.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_facilitator_settlement_still_unmined_at_the_timeout_stays_pending_and_recovery_credits_it(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Facilitator", ct, new Dictionary<string, string?> { ["X402:FacilitatorTimeoutSeconds"] = "3" });
        var (header, a, amount) = await ChainPaymentTests.SignAsync(rig, Body, ct);
        // /verify has answered by the time the paid call runs; from then on blocks are not mined until the test says so.
        rig.Host.Invocation.During = (_, token) => rig.Chain.SetAutomineAsync(false, token);

        using var response = await rig.Host.PostAsync(Body, ChainPaymentTests.V2(header), rig.Host.UserToken("community-slow"), ct);
        var body = await ChainPaymentTests.JsonAsync(response, ct);
        await rig.Chain.MineAsync(ct);
        await rig.Chain.SetAutomineAsync(true, ct);
        Assert.Equal(amount, await rig.Chain.BalanceAsync(rig.PayTo)); // the facilitator's transaction landed: the payer paid
        Assert.True(await rig.Chain.AuthorizationUsedAsync(a.From, a.Nonce));
        Assert.True((503, X402Errors.SettlementPending) == ((int)response.StatusCode, body["error"]?.GetValue<string>()), body.ToJsonString());
        Assert.Equal(0, await rig.Host.Store.CountAsync(PaymentStates.Failed, ct));
        var row = Assert.Single(await rig.Host.Store.ListRecoverableAsync(long.MaxValue, ct));
        Assert.Equal(PaymentStates.Settling, row.State);

        await rig.Host.AgeAsync(row.Id, Stale, ct);
        await rig.Host.Recovery.RecoverOnceAsync(ct);

        await AssertSettledOnceAsync(rig, row.Id, "community-slow", header, amount, ct);
    }

    /// <summary>
    /// The facilitator's settlement was still unmined at the timeout (the payment stays settling), and by the time recovery
    /// takes the row the facilitator is down (connection refused) and freeside cannot reach the chain either. That pass
    /// cannot tell whether the earlier attempt moved the money, so the payment stays settling; it failed for good instead,
    /// and once the transaction was mined the payer had paid for a withheld answer with no credit note. Once the chain
    /// answers again, recovery settles it with one credit note, and the payer pays once.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_pending_facilitator_settlement_stays_pending_while_the_facilitator_and_the_chain_are_down_and_recovery_credits_it_after(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        TcpProxy? proxy = null;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Facilitator", ct, new Dictionary<string, string?> { ["X402:FacilitatorTimeoutSeconds"] = "3" },
            rpcUrl: chain =>
            {
                proxy = new TcpProxy("127.0.0.1", new Uri(chain.RpcUrl).Port);
                return $"http://127.0.0.1:{proxy.Port}";
            });
        await using var proxyScope = proxy!;
        var (header, a, amount) = await ChainPaymentTests.SignAsync(rig, Body, ct);
        rig.Host.Invocation.During = (_, token) => rig.Chain.SetAutomineAsync(false, token);

        using var response = await rig.Host.PostAsync(Body, ChainPaymentTests.V2(header), rig.Host.UserToken("community-down"), ct);
        var body = await ChainPaymentTests.JsonAsync(response, ct);
        Assert.True((503, X402Errors.SettlementPending) == ((int)response.StatusCode, body["error"]?.GetValue<string>()), body.ToJsonString());
        var row = Assert.Single(await rig.Host.Store.ListRecoverableAsync(long.MaxValue, ct));

        // Both down: the facilitator's port refuses connections, and freeside's RPC connections are cut.
        NodeTool.Kill(rig.Facilitator!);
        proxy!.Cut();
        await rig.Host.AgeAsync(row.Id, Stale, ct);
        await rig.Host.Recovery.RecoverOnceAsync(ct);
        var during = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.True(PaymentStates.Settling == during.State, $"{during.State} {during.Error}");

        // The facilitator's transaction is mined, and the chain answers freeside again (the facilitator stays down).
        await rig.Chain.MineAsync(ct);
        await rig.Chain.SetAutomineAsync(true, ct);
        proxy.Restore();
        Assert.Equal(amount, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.True(await rig.Chain.AuthorizationUsedAsync(a.From, a.Nonce));
        await rig.Host.AgeAsync(row.Id, Stale, ct);
        await rig.Host.Recovery.RecoverOnceAsync(ct);

        await AssertSettledOnceAsync(rig, row.Id, "community-down", header, amount, ct);
    }

    /// <summary>
    /// An earlier attempt's facilitator settlement was broadcast and is still in the mempool (the facilitator did not
    /// answer in time; a slow chain), and on recovery the facilitator refuses the settlement outright (its own RPC failed).
    /// The authorization is unused only because that transaction is not mined yet: the payment stays settling. It failed
    /// instead, and once the transaction was mined the payer had paid for a withheld answer with no credit note. Once it is
    /// mined, recovery settles with it.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_facilitator_refusal_on_recovery_leaves_a_payment_settling_while_an_earlier_transfer_may_be_mined(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var refusing = RefusingFacilitator.Start();
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Facilitator", ct, new Dictionary<string, string?> { ["X402:FacilitatorUrl"] = refusing.Url });
        var row = await CrashedRowAsync(rig, PaymentStates.Settling, ct);
        await rig.Chain.SetAutomineAsync(false, ct);
        var earlier = await BroadcastAsync(rig, row);
        await AgeAsync(rig, row, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var kept = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.True(PaymentStates.Settling == kept.State, $"{kept.State} {kept.Error}");
        Assert.Equal(1, refusing.Settles);
        await rig.Chain.MineAsync(ct);
        await rig.Chain.SetAutomineAsync(true, ct);
        Assert.Equal(row.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo)); // the earlier transfer was mined: the payer paid
        await AgeAsync(rig, row, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var settled = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.True((PaymentStates.Settled, earlier) == (settled.State, settled.TxHash), $"{settled.State} {settled.Error}");
        Assert.Equal(earlier, Assert.Single(rig.Host.Sink.Lots).Value.Transaction);
    }

    /// <summary>
    /// Recovery of a facilitator payment the facilitator keeps refusing, whose authorization nothing used: it stays settling
    /// while a transfer may still use the authorization, and fails with the facilitator's reason once the chain is past its
    /// validBefore (no transfer can ever use it). Nothing is credited.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_facilitator_refusal_on_recovery_fails_the_payment_once_its_unused_authorization_expired(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var refusing = RefusingFacilitator.Start();
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Facilitator", ct, new Dictionary<string, string?> { ["X402:FacilitatorUrl"] = refusing.Url });
        var row = await CrashedRowAsync(rig, PaymentStates.Settling, ct);
        await AgeAsync(rig, row, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        Assert.Equal(PaymentStates.Settling, (await rig.Host.Store.GetAsync(row.Id, ct))!.State);
        await rig.Chain.IncreaseTimeAsync(120, ct); // CrashedRowAsync's authorization is valid for 60 s
        await AgeAsync(rig, row, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var failed = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.Equal((PaymentStates.Failed, RefusingFacilitator.Reason, (string?)null), (failed.State, failed.Error, failed.CreditNoteId));
        Assert.Equal(2, refusing.Settles);
        Assert.Empty(rig.Host.Sink.Lots);
        Assert.Equal(0, await rig.Chain.BalanceAsync(rig.PayTo));
    }

    /// <summary>Makes a crashed row stale for recovery (rows are aged by their last touch).</summary>
    static Task AgeAsync(ChainPaymentTests.Rig rig, PaymentRow row, CancellationToken ct) => rig.Host.AgeAsync(row.Id, Stale, ct);

    /// <summary>Submits a crashed row's transfer from another account (as a facilitator does) without waiting for it; returns its hash.</summary>
    static Task<string> BroadcastAsync(ChainPaymentTests.Rig rig, PaymentRow row)
    {
        var request = rig.Host.App.Services.GetRequiredService<PaymentFlow>().RequestFor(row);
        var a = TransferWithAuthorization.From3009(request.Authorization);
        var sender = new Nethereum.Web3.Web3(new Nethereum.Web3.Accounts.Account(PaymentSigning.FacilitatorKey, 84532), rig.Chain.RpcUrl);
        return sender.Eth.GetContractTransactionHandler<TransferWithAuthorizationFunction>().SendRequestAsync(X402Options.BaseSepoliaUsdc,
            new TransferWithAuthorizationFunction
            {
                From = a.From, To = a.To, Value = a.Value, ValidAfter = a.ValidAfter, ValidBefore = a.ValidBefore, AuthorizationNonce = a.Nonce,
                Signature = request.Signature.HexToByteArray(), Gas = 200_000,
            });
    }

    /// <summary>
    /// The payment settled with one credit note of amount less the call's cost to <paramref name="community"/>, its stored
    /// answer replays that note, the payer paid once and the paid call ran once.
    /// </summary>
    static async Task AssertSettledOnceAsync(ChainPaymentTests.Rig rig, string paymentId, string community, string header, long amount, CancellationToken ct)
    {
        var settled = (await rig.Host.Store.GetAsync(paymentId, ct))!;
        Assert.True(PaymentStates.Settled == settled.State, $"{settled.State} {settled.Error}");
        var lot = Assert.Single(rig.Host.Sink.Lots).Value;
        Assert.Equal((community, amount - 400, settled.TxHash), (lot.CommunityId, lot.AmountMicro, lot.Transaction));
        using var replay = await rig.Host.PostAsync(Body, ChainPaymentTests.V2(header), ct: ct);
        Assert.Equal((200, lot.Id), ((int)replay.StatusCode, (await ChainPaymentTests.JsonAsync(replay, ct))["creditNote"]!["id"]!.GetValue<string>()));
        Assert.Equal(amount, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Equal(1, rig.Host.Invocation.Calls);
    }

    /// <summary>Settles a crashed row's payload through the rig's facilitator behind freeside's back; returns the transaction.</summary>
    static async Task<string> SettleThroughFacilitatorAsync(ChainPaymentTests.Rig rig, PaymentRow row, CancellationToken ct)
    {
        using var http = new HttpClient { BaseAddress = new Uri(rig.Host.Options.FacilitatorUrl.TrimEnd('/') + "/") };
        using var settle = await http.PostAsync("settle", System.Net.Http.Json.JsonContent.Create(new JsonObject
        {
            ["x402Version"] = 2,
            ["paymentPayload"] = JsonNode.Parse(row.PayloadJson),
            ["paymentRequirements"] = JsonNode.Parse(row.RequirementJson),
        }), ct);
        var landed = JsonNode.Parse(await settle.Content.ReadAsStringAsync(ct))!;
        Assert.True(landed["success"]?.GetValue<bool>() == true, landed.ToJsonString());
        return landed["transaction"]!.GetValue<string>();
    }

    /// <summary>
    /// The facilitator settled, freeside crashed, and meanwhile another payment row took that transaction hash (as the old
    /// legacy proof path let anyone do with an x402 settlement): recovery fails the payment with its own code instead of
    /// throwing on every pass, and no second credit note is issued for the transaction.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Recovery_fails_a_settlement_whose_transaction_another_payment_claimed_and_credits_nothing(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Facilitator", ct);
        var row = await CrashedRowAsync(rig, PaymentStates.Settling, ct);
        var tx = await SettleThroughFacilitatorAsync(rig, row, ct);
        var (inserted, _) = await rig.Host.Store.ClaimAsync(new PaymentRow
        {
            Id = "pay_claimed_" + Guid.NewGuid().ToString("N")[..8],
            Kind = "proof",
            X402Version = 1,
            Network = row.Network,
            Asset = row.Asset,
            Payer = row.Payer,
            Nonce = tx,
            PayloadHash = tx,
            AmountRequiredMicro = row.AmountRequiredMicro,
            ValueMicro = row.ValueMicro,
            CommunityId = "community-other",
            State = PaymentStates.Settled,
            TxHash = tx,
        }, ct);
        Assert.True(inserted);
        await rig.Host.AgeAsync(row.Id, Stale, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var failed = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.Equal((PaymentStates.Failed, X402Errors.TransactionClaimed, 409L), (failed.State, failed.Error, failed.ResponseStatus));
        Assert.Equal(X402Errors.TransactionClaimed, JsonNode.Parse(failed.ResponseJson!)!["error"]!.GetValue<string>());
        Assert.Null(failed.CreditNoteId);
        Assert.Empty(rig.Host.Sink.Lots);
        Assert.Equal(row.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo));

        // Terminal: later passes leave it alone.
        await rig.Host.Recovery.RecoverOnceAsync(ct);
        Assert.Equal(PaymentStates.Failed, (await rig.Host.Store.GetAsync(row.Id, ct))!.State);
        Assert.Empty(rig.Host.Sink.Lots);
    }

    /// <summary>
    /// A worker still holding a row it no longer owns (recovery or another worker already finished it as failed) must not
    /// put the payer's authorization on chain: the row stays failed, nothing moves, no credit note.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_worker_that_lost_its_row_never_broadcasts_the_settlement(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var row = await CrashedRowAsync(rig, PaymentStates.Settling, ct);
        row.State = PaymentStates.Settling;
        row.CostMicro = 300;
        Assert.True(await rig.Host.Store.MarkFailedAsync(row.Id, "abandoned", 502, """{"error":"abandoned","detail":"taken by recovery"}""", ct));

        var flow = rig.Host.App.Services.GetRequiredService<PaymentFlow>();
        var result = await flow.SettleAndFinishAsync(row, flow.RequestFor(row), ct);

        var (status, body) = await ExecuteAsync(rig.Host, result);
        Assert.Equal((502, "abandoned"), (status, body["error"]!.GetValue<string>()));
        Assert.Equal(0, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.False(await rig.Chain.AuthorizationUsedAsync(row.Payer, row.Nonce));
        var stored = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.Equal((PaymentStates.Failed, (string?)null), (stored.State, stored.TxHash));
        Assert.Empty(rig.Host.Sink.Lots);
    }

    /// <summary>One stuck row that throws (here, a payload that cannot be read) must not stop the pass from recovering the rest.</summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task One_row_recovery_cannot_handle_does_not_stop_the_others(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        // No chain: the RPC points at a closed port, and neither row needs it.
        await using var host = await PaymentHost.StartAsync(engine, new Dictionary<string, string?>
        {
            ["X402:Settler"] = "Direct",
            ["X402:RelayerKey"] = PaymentSigning.RelayerKey,
            ["X402:RpcUrl"] = $"http://127.0.0.1:{TestStorage.FreePort()}",
        });
        PaymentRow Row(string id) => new()
        {
            Id = id,
            X402Version = 2,
            Network = "eip155:84532",
            Asset = X402Options.BaseSepoliaUsdc.ToLowerInvariant(),
            Payer = PaymentSigning.AddressOf(PaymentSigning.PayerKey).ToLowerInvariant(),
            Nonce = PaymentSigning.RandomNonce(),
            PayloadHash = id,
            AmountRequiredMicro = 1_000,
            ValueMicro = 1_000,
            CommunityId = "community-crash",
            State = PaymentStates.Verified,
        };
        var broken = Row("pay_broken_" + Guid.NewGuid().ToString("N")[..8]);
        var abandoned = Row("pay_abandoned_" + Guid.NewGuid().ToString("N")[..8]);
        Assert.True((await host.Store.ClaimAsync(broken, ct)).Inserted);
        Assert.True(await host.Store.MarkSettlingAsync(broken.Id, 300, """{"content":"answer"}""", ct));
        Assert.True((await host.Store.ClaimAsync(abandoned, ct)).Inserted);
        await host.AgeAsync(broken.Id, Stale * 2, ct); // the oldest, so the pass meets it first
        await host.AgeAsync(abandoned.Id, Stale, ct);

        await host.Recovery.RecoverOnceAsync(ct);

        Assert.Equal(PaymentStates.Failed, (await host.Store.GetAsync(abandoned.Id, ct))!.State);
        Assert.Equal(PaymentStates.Settling, (await host.Store.GetAsync(broken.Id, ct))!.State);
        Assert.Empty(host.Sink.Lots);
    }

    internal static async Task<(int Status, JsonObject Body)> ExecuteAsync(PaymentHost host, Microsoft.AspNetCore.Http.IResult result)
    {
        var http = new Microsoft.AspNetCore.Http.DefaultHttpContext { RequestServices = host.App.Services };
        using var stream = new MemoryStream();
        http.Response.Body = stream;
        await result.ExecuteAsync(http);
        return (http.Response.StatusCode, JsonNode.Parse(stream.ToArray())!.AsObject());
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_usdc_transfer_proof_issues_one_credit_note_even_when_sent_twice(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var (_, v1) = await rig.Host.ChallengeAsync(Body, ct);
        var amount = long.Parse(v1["amount"]!.GetValue<string>());
        var tx = await rig.Chain.TransferUsdcAsync(v1["paymentAddress"]!.GetValue<string>(), amount);

        var responses = await Task.WhenAll(Enumerable.Range(0, 8).Select(async _ =>
        {
            using var r = await rig.Host.PostAsync(Body, PaymentSigning.ProofHeaders(tx, AnvilChain.FunderKey), rig.Host.UserToken("community-proof"), ct);
            return ((int)r.StatusCode, JsonNode.Parse(await r.Content.ReadAsStringAsync(ct))!.AsObject());
        }));
        Assert.All(responses, r => Assert.True(r.Item1 == 200 || (r.Item1 == 409 && r.Item2["error"]!.GetValue<string>() == X402Errors.DuplicateSettlement), r.Item2.ToJsonString()));
        var notes = responses.Where(r => r.Item1 == 200).Select(r => r.Item2["creditNote"]!.AsObject()).ToList();
        Assert.NotEmpty(notes);
        Assert.Single(notes.Select(n => n["id"]!.GetValue<string>()).Distinct());
        Assert.Equal(amount, notes[0]["amountMicro"]!.GetValue<long>());
        Assert.Equal(tx, notes[0]["transaction"]!.GetValue<string>());
        Assert.Single(rig.Host.Sink.Lots);

        using var later = await rig.Host.PostAsync(Body, PaymentSigning.ProofHeaders(tx, AnvilChain.FunderKey), rig.Host.UserToken("community-proof"), ct);
        Assert.Equal(200, (int)later.StatusCode);
        Assert.Single(rig.Host.Sink.Lots);
        Assert.Equal(0, rig.Host.Invocation.Calls);
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Proofs_that_pay_too_little_or_nothing_are_refused(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var (_, v1) = await rig.Host.ChallengeAsync(Body, ct);
        var amount = long.Parse(v1["amount"]!.GetValue<string>());

        var tooLittle = await rig.Chain.TransferUsdcAsync(rig.PayTo, amount - 1);
        using var r1 = await rig.Host.PostAsync(Body, PaymentSigning.ProofHeaders(tooLittle, AnvilChain.FunderKey), ct: ct);
        Assert.Equal((402, X402Errors.ValueMismatch), ((int)r1.StatusCode, JsonNode.Parse(await r1.Content.ReadAsStringAsync(ct))!["error"]!.GetValue<string>()));

        // Native value is refused unless X402:NativeMicroPerWei is configured.
        var native = await rig.Chain.SendNativeAsync(rig.PayTo, amount);
        using var r2 = await rig.Host.PostAsync(Body, PaymentSigning.ProofHeaders(native, AnvilChain.FunderKey), ct: ct);
        Assert.Equal((402, X402Errors.RecipientMismatch), ((int)r2.StatusCode, JsonNode.Parse(await r2.Content.ReadAsStringAsync(ct))!["error"]!.GetValue<string>()));

        using var r3 = await rig.Host.PostAsync(Body, PaymentSigning.ProofHeaders("0x1234", AnvilChain.FunderKey), ct: ct);
        Assert.Equal(400, (int)r3.StatusCode);
        using var r4 = await rig.Host.PostAsync(Body, PaymentSigning.ProofHeaders("0x" + new string('a', 64), AnvilChain.FunderKey), ct: ct);
        Assert.Equal((402, X402Errors.ProofPending), ((int)r4.StatusCode, JsonNode.Parse(await r4.Content.ReadAsStringAsync(ct))!["error"]!.GetValue<string>()));
        Assert.Empty(rig.Host.Sink.Lots);
    }

    [Fact]
    public async Task The_gate_native_value_flow_gets_a_credit_note_when_enabled()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync("sqlite", "Direct", ct, new Dictionary<string, string?> { ["X402:NativeMicroPerWei"] = "1" });
        var (_, v1) = await rig.Host.ChallengeAsync(Body, ct);
        var amount = long.Parse(v1["amount"]!.GetValue<string>());
        var tx = await rig.Chain.SendNativeAsync(v1["paymentAddress"]!.GetValue<string>(), amount);
        using var response = await rig.Host.PostAsync(Body, PaymentSigning.ProofHeaders(tx, AnvilChain.FunderKey), rig.Host.UserToken("community-gate"), ct);
        var body = JsonNode.Parse(await response.Content.ReadAsStringAsync(ct))!.AsObject();
        Assert.True(200 == (int)response.StatusCode, body.ToJsonString());
        Assert.Equal(amount, body["creditNote"]!["amountMicro"]!.GetValue<long>());
        Assert.Equal("community-gate", Assert.Single(rig.Host.Sink.Lots).Value.CommunityId);
    }
}

/// <summary>A facilitator that answers every <c>/settle</c> with a refusal (<c>success: false</c>), and counts them.</summary>
internal sealed class RefusingFacilitator : IAsyncDisposable
{
    public const string Reason = "unexpected_settle_error";
    readonly WebApplication _app;
    int _settles;

    RefusingFacilitator()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls($"http://127.0.0.1:{TestStorage.FreePort()}");
        _app = builder.Build();
        _app.MapPost("/settle", () =>
        {
            Interlocked.Increment(ref _settles);
            return Results.Json(new JsonObject
            {
                ["success"] = false, ["errorReason"] = Reason, ["transaction"] = "", ["network"] = "eip155:84532",
            });
        });
    }

    public string Url => _app.Urls.First();

    public int Settles => Volatile.Read(ref _settles);

    public static RefusingFacilitator Start()
    {
        var facilitator = new RefusingFacilitator();
        facilitator._app.Start();
        return facilitator;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
