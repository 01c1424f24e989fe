using System.Text;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Payments;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Nethereum.Hex.HexConvertors.Extensions;
using Nethereum.RPC.Eth.DTOs;
using Nethereum.Web3;
using Nethereum.Web3.Accounts;

namespace Arrakis.Freeside.Tests.Payments;

/// <summary>
/// The direct settler's relayer account is shared by every freeside replica (one secret, several tasks): its transaction
/// nonces must not collide across replicas, or one settlement replaces or refuses the other.
/// </summary>
public sealed class RelayerNonceTests
{
    static readonly JsonObject Body = new() { ["prompt"] = "x402 payment test", ["model"] = "cheap" };

    /// <summary>
    /// Two replicas on one database and one relayer key settle two payments at the same moment; the RPC in front of the
    /// chain holds the relayer's nonce reads until both replicas asked (or a few seconds passed), as two tasks reading the
    /// account's next nonce at once do. Each payment must settle with its own mined transaction and one credit note.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Two_replicas_sharing_the_relayer_key_settle_two_payments_at_once(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        RelayerRpc? rpc = null;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct, rpcUrl: chain =>
        {
            rpc = RelayerRpc.Start(chain.RpcUrl, parties: 2, hold: TimeSpan.FromSeconds(3));
            return rpc.Url;
        });
        await using var rpcScope = rpc!;
        var config = rig.Host.App.Configuration;
        await using var replica = await PaymentHost.StartAsync(engine, new Dictionary<string, string?>
        {
            ["LOA_DATA_DIR"] = config["LOA_DATA_DIR"],
            ["ConnectionStrings:Freeside"] = config["ConnectionStrings:Freeside"],
            ["X402:PayTo"] = rig.PayTo,
            ["X402:RpcUrl"] = rpc!.Url,
            ["X402:Settler"] = "Direct",
            ["X402:RelayerKey"] = PaymentSigning.RelayerKey,
        });
        var (first, _, amount) = await ChainPaymentTests.SignAsync(rig, Body, ct);
        var (second, _, _) = await ChainPaymentTests.SignAsync(rig, Body, ct);

        var responses = await Task.WhenAll(
            PayAsync(rig.Host, first, "community-one"),
            PayAsync(replica, second, "community-two"));

        Assert.All(responses, r => Assert.True(r.Status == 200, r.Body.ToJsonString()));
        var transactions = responses.Select(r => r.Body["payment"]!["transaction"]!.GetValue<string>()).ToList();
        Assert.Equal(2, transactions.Distinct().Count());
        foreach (var tx in transactions)
        {
            Assert.Equal(1, (int)(await rig.Chain.ReceiptStatusAsync(tx)).Value);
        }

        // Both replicas read the relayer's nonce through the relay, and no send was refused for a taken nonce.
        Assert.True(rpc.NonceReads >= 2, $"{rpc.NonceReads} nonce reads went through the RPC");
        Assert.Equal(2, rpc.Sends);
        Assert.Equal(2 * amount, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Equal(2, await rig.Host.Store.CountAsync(PaymentStates.Settled, ct));
        Assert.Equal("community-one", Assert.Single(rig.Host.Sink.Lots).Value.CommunityId);
        Assert.Equal("community-two", Assert.Single(replica.Sink.Lots).Value.CommunityId);

        async Task<(int Status, JsonObject Body)> PayAsync(PaymentHost host, string header, string community)
        {
            using var response = await host.PostAsync(Body, ChainPaymentTests.V2(header), host.UserToken(community), ct);
            return ((int)response.StatusCode, await ChainPaymentTests.JsonAsync(response, ct));
        }
    }

    /// <summary>
    /// The RPC node answers a relayer nonce that is already used (it is behind the node that took the last settlement, or
    /// a sender that does not take the lock used it): the node refuses the settlement as "nonce too low". That transaction
    /// can never be mined, so freeside signs the payment again with a fresh nonce and settles it, rather than failing a
    /// call that was served.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_settlement_refused_for_a_used_relayer_nonce_is_signed_again_and_settles(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        var (rig, rpc) = await StartBehindRelayAsync(engine, ct);
        await using var rigScope = rig;
        await using var rpcScope = rpc;
        var (first, _, amount) = await ChainPaymentTests.SignAsync(rig, Body, ct);
        using (var settled = await rig.Host.PostAsync(Body, ChainPaymentTests.V2(first), rig.Host.UserToken("community-one"), ct))
        {
            Assert.Equal(200, (int)settled.StatusCode);
        }

        Assert.Equal(1, rpc.Sends);
        rpc.LagNextNonceReads(1);
        var (second, a, _) = await ChainPaymentTests.SignAsync(rig, Body, ct);
        using var response = await rig.Host.PostAsync(Body, ChainPaymentTests.V2(second), rig.Host.UserToken("community-two"), ct);
        var body = await ChainPaymentTests.JsonAsync(response, ct);

        Assert.True(200 == (int)response.StatusCode, body.ToJsonString());
        Assert.Equal(3, rpc.Sends); // the refused send, then the one signed again
        var tx = body["payment"]!["transaction"]!.GetValue<string>();
        Assert.Equal(1, (int)(await rig.Chain.ReceiptStatusAsync(tx)).Value);
        Assert.True(await rig.Chain.AuthorizationUsedAsync(a.From, a.Nonce));
        Assert.Equal(2 * amount, await rig.Chain.BalanceAsync(rig.PayTo));
        var row = (await rig.Host.Store.FindByTxAsync(tx, ct))!;
        Assert.Equal(PaymentStates.Settled, row.State);
        Assert.Equal(tx, "0x" + Nethereum.Util.Sha3Keccack.Current.CalculateHashFromHex(row.RawTx!)); // recovery would rebroadcast this one
        Assert.Equal(2, rig.Host.Sink.Lots.Count);
    }

    /// <summary>
    /// The direct settler signed and recorded a settlement, the node lost it (never mined), freeside crashed, and a sender
    /// outside freeside used that relayer nonce for something else. Recovery's rebroadcast is refused as "nonce too low"
    /// and has no receipt; the authorization is still unused, so the payment is signed again with a fresh relayer nonce
    /// and settles with one credit note, rather than failing a call that was served.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Recovery_signs_again_a_recorded_settlement_whose_relayer_nonce_another_sender_took(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var (row, lost) = await RecordedButNeverSentAsync(rig, ct);
        await Relayer(rig).Eth.GetEtherTransferService().TransferEtherAndWaitForReceiptAsync(rig.PayTo, 0.001m); // takes the lost one's nonce
        await rig.Host.AgeAsync(row.Id, RecoveryAndProofTests.Stale, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var settled = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.True(PaymentStates.Settled == settled.State, $"{settled.State} {settled.Error}");
        Assert.NotEqual(lost, settled.TxHash);
        Assert.Equal(1, (int)(await rig.Chain.ReceiptStatusAsync(settled.TxHash!)).Value);
        Assert.Equal(settled.TxHash, "0x" + Nethereum.Util.Sha3Keccack.Current.CalculateHashFromHex(settled.RawTx!));
        Assert.Equal(row.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo));
        var lot = Assert.Single(rig.Host.Sink.Lots).Value;
        Assert.Equal(("community-crash", row.ValueMicro - 300, settled.TxHash), (lot.CommunityId, lot.AmountMicro, lot.Transaction));
    }

    /// <summary>
    /// The recorded settlement was replaced outside freeside: a transaction with the same call and the same relayer nonce
    /// (a "speed up" from a wallet holding the relayer key) was mined instead. The payer paid; recovery's rebroadcast is
    /// refused as "nonce too low", and the payment settles with the replacement (found by its AuthorizationUsed event)
    /// and one credit note, instead of failing a paid payment. Nothing is sent twice.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Recovery_settles_with_the_transaction_that_replaced_the_recorded_settlement_outside_freeside(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var (row, lost) = await RecordedButNeverSentAsync(rig, ct);
        var relayer = Relayer(rig);
        var replacement = await SignSettlementAsync(rig, row, await NextNonceAsync(relayer), gas: 250_000);
        var replaced = await relayer.Eth.Transactions.SendRawTransaction.SendRequestAsync(replacement.EnsureHexPrefix());
        Assert.NotEqual(lost, replaced);
        Assert.Equal(1, (int)(await MinedAsync(relayer, replaced, ct)).Status.Value);
        Assert.Equal(row.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo));
        await rig.Host.AgeAsync(row.Id, RecoveryAndProofTests.Stale, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var lot = await AssertSettledWithAsync(rig, row, replaced, ct);
        Assert.Equal(("community-crash", row.ValueMicro - 300), (lot.CommunityId, lot.AmountMicro));
    }

    /// <summary>
    /// As above, but recovery runs while the replacement still waits in the mempool: the rebroadcast is refused as
    /// "replacement transaction underpriced". The replacement may carry the payment, so the payment stays settling (it
    /// failed, and the replacement then paid for nothing), and once it is mined the next pass settles with it.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Recovery_keeps_settling_while_a_replacement_of_the_recorded_settlement_is_pending_and_settles_with_it_once_mined(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var (row, lost) = await RecordedButNeverSentAsync(rig, ct);
        var relayer = Relayer(rig);
        await rig.Chain.SetAutomineAsync(false, ct);
        var replacement = await SignSettlementAsync(rig, row, await NextNonceAsync(relayer), gas: 250_000, tip: Nethereum.Web3.Web3.Convert.ToWei(50, Nethereum.Util.UnitConversion.EthUnit.Gwei));
        var replaced = await relayer.Eth.Transactions.SendRawTransaction.SendRequestAsync(replacement.EnsureHexPrefix());
        await rig.Host.AgeAsync(row.Id, RecoveryAndProofTests.Stale, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var kept = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.True((PaymentStates.Settling, lost) == (kept.State, kept.TxHash), $"{kept.State} {kept.Error}");
        await rig.Chain.MineAsync(ct);
        await rig.Chain.SetAutomineAsync(true, ct);
        Assert.Equal(1, (int)(await MinedAsync(relayer, replaced, ct)).Status.Value);
        await rig.Host.AgeAsync(row.Id, RecoveryAndProofTests.Stale, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        await AssertSettledWithAsync(rig, row, replaced, ct);
    }

    /// <summary>
    /// The recorded settlement was lost before it was mined, and someone else (the payer, a facilitator) submitted the same
    /// authorization first. Recovery's rebroadcast is taken and mined, but reverts ("authorization is used"): the payer
    /// paid through the other transaction, so the payment settles with it and one credit note instead of failing.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Recovery_settles_with_another_senders_transfer_when_the_rebroadcast_reverts(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var (row, lost) = await RecordedButNeverSentAsync(rig, ct);
        var funder = new Web3(new Account(AnvilChain.FunderKey, 84532), rig.Chain.RpcUrl);
        var request = rig.Host.App.Services.GetRequiredService<PaymentFlow>().RequestFor(row);
        var a = TransferWithAuthorization.From3009(request.Authorization);
        var other = await funder.Eth.GetContractTransactionHandler<TransferWithAuthorizationFunction>().SendRequestAndWaitForReceiptAsync(X402Options.BaseSepoliaUsdc,
            new TransferWithAuthorizationFunction
            {
                From = a.From, To = a.To, Value = a.Value, ValidAfter = a.ValidAfter, ValidBefore = a.ValidBefore, AuthorizationNonce = a.Nonce,
                Signature = request.Signature.HexToByteArray(), Gas = 200_000,
            });
        Assert.Equal(1, (int)other.Status.Value);
        await rig.Host.AgeAsync(row.Id, RecoveryAndProofTests.Stale, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        Assert.Equal(0, (int)(await rig.Chain.ReceiptStatusAsync(lost)).Value); // the rebroadcast was mined and reverted
        await AssertSettledWithAsync(rig, row, other.TransactionHash, ct);
    }

    /// <summary>
    /// The recorded settlement can never be mined (another sender took its relayer nonce) and the payer cancelled the
    /// authorization: no money moved and none can, so recovery fails the payment without credit and signs nothing new.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Recovery_fails_a_lost_settlement_whose_payer_cancelled_the_authorization_and_sends_nothing_new(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var (row, _) = await RecordedButNeverSentAsync(rig, ct);
        var relayer = Relayer(rig);
        await relayer.Eth.GetEtherTransferService().TransferEtherAndWaitForReceiptAsync(rig.PayTo, 0.001m);
        await rig.Chain.CancelAuthorizationAsync(row.Payer, row.Nonce, PaymentSigning.SignCancel(rig.Host.Options, row.Nonce, rig.PayerKey));
        var nonce = await NextNonceAsync(relayer);
        await rig.Host.AgeAsync(row.Id, RecoveryAndProofTests.Stale, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var failed = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.Equal((PaymentStates.Failed, X402Errors.NonceUsed, (string?)null), (failed.State, failed.Error, failed.CreditNoteId));
        Assert.Equal(nonce, await NextNonceAsync(relayer)); // no new settlement was sent
        Assert.Empty(rig.Host.Sink.Lots);
        Assert.Equal(0, await rig.Chain.BalanceAsync(rig.PayTo));
    }

    /// <summary>
    /// The direct settler found the transfer that used the payment's authorization (another sender's) and recorded it,
    /// without a raw transaction, and freeside crashed before marking the payment settled. Recovery settles with that
    /// transfer and signs nothing: a new transfer of a used authorization could only revert, at the relayer's cost.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Recovery_of_a_recorded_transfer_found_on_chain_settles_with_it_and_sends_nothing(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var row = await RecoveryAndProofTests.CrashedRowAsync(rig, PaymentStates.Settling, ct);
        var request = rig.Host.App.Services.GetRequiredService<PaymentFlow>().RequestFor(row);
        var a = TransferWithAuthorization.From3009(request.Authorization);
        var funder = new Web3(new Account(AnvilChain.FunderKey, 84532), rig.Chain.RpcUrl);
        var other = await funder.Eth.GetContractTransactionHandler<TransferWithAuthorizationFunction>().SendRequestAndWaitForReceiptAsync(X402Options.BaseSepoliaUsdc,
            new TransferWithAuthorizationFunction
            {
                From = a.From, To = a.To, Value = a.Value, ValidAfter = a.ValidAfter, ValidBefore = a.ValidBefore, AuthorizationNonce = a.Nonce,
                Signature = request.Signature.HexToByteArray(), Gas = 200_000,
            });
        Assert.Equal(1, (int)other.Status.Value);
        // What the settler records for a transfer it found on chain: its hash, no raw transaction.
        Assert.Equal(RecordOutcome.Recorded, await rig.Host.Store.RecordTransactionAsync(row.Id, other.TransactionHash, null, ct));
        var relayer = Relayer(rig);
        var nonce = await NextNonceAsync(relayer);
        await rig.Host.AgeAsync(row.Id, RecoveryAndProofTests.Stale, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var settled = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.True((PaymentStates.Settled, other.TransactionHash) == (settled.State, settled.TxHash), $"{settled.State} {settled.Error}");
        Assert.Equal(other.TransactionHash, Assert.Single(rig.Host.Sink.Lots).Value.Transaction);
        Assert.Equal(nonce, await NextNonceAsync(relayer)); // no transaction was sent
        Assert.Equal(row.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo));
    }

    /// <summary>
    /// The direct settler's transaction was mined and freeside crashed before marking the payment settled. Recovery's
    /// rebroadcast is refused (the chain has it), and the receipt read that follows is answered with a JSON-RPC error (a
    /// provider's rate limit): that says nothing about the transaction, so the payment stays settling, and the next pass
    /// settles it. It failed instead, as if the node had refused the transaction, though the payer had paid.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Recovery_whose_receipt_read_is_answered_with_an_rpc_error_leaves_a_mined_settlement_settling(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        var (rig, rpc) = await StartBehindRelayAsync(engine, ct);
        await using var rigScope = rig;
        await using var rpcScope = rpc;
        var row = await RecoveryAndProofTests.CrashedRowAsync(rig, PaymentStates.Settling, ct);
        var flow = rig.Host.App.Services.GetRequiredService<PaymentFlow>();
        var landed = await rig.Host.App.Services.GetRequiredService<IPaymentSettler>()
            .SettleAsync(flow.RequestFor(row), (tx, raw) => rig.Host.Store.RecordTransactionAsync(row.Id, tx, raw, ct), ct);
        Assert.True(landed.Success, landed.ErrorReason);
        Assert.Equal(row.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo)); // the payer paid
        await rig.Host.AgeAsync(row.Id, RecoveryAndProofTests.Stale, ct);
        rpc.FailNextReceiptReads(1);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var kept = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.True(PaymentStates.Settling == kept.State, $"{kept.State} {kept.Error}");
        Assert.Equal(2, rpc.Sends); // the settlement and its rebroadcast
        await rig.Host.AgeAsync(row.Id, RecoveryAndProofTests.Stale, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var settled = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.True((PaymentStates.Settled, landed.Transaction) == (settled.State, settled.TxHash), $"{settled.State} {settled.Error}");
        Assert.Equal(landed.Transaction, Assert.Single(rig.Host.Sink.Lots).Value.Transaction);
    }

    /// <summary>
    /// The direct settler broadcast its transaction and freeside crashed before it was mined (it waits in the mempool, as
    /// on a slow chain). Recovery's rebroadcast is answered with a JSON-RPC error (a provider's rate limit) and there is no
    /// receipt yet: that answer is about this send only, and the transaction the earlier attempt broadcast may still be
    /// mined, so the payment stays settling. It failed instead, and once the transaction was mined the payer had paid for
    /// a withheld answer with no credit note. Once it is mined, the next pass settles it, and nothing else is sent.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Recovery_whose_rebroadcast_is_refused_leaves_a_broadcast_unmined_settlement_settling(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        var (rig, rpc) = await StartBehindRelayAsync(engine, ct);
        await using var rigScope = rig;
        await using var rpcScope = rpc;
        var (row, recorded) = await RecordedButNeverSentAsync(rig, ct);
        var relayer = Relayer(rig);
        await rig.Chain.SetAutomineAsync(false, ct);
        // The earlier attempt's broadcast: the node keeps it, unmined.
        var raw = (await rig.Host.Store.GetAsync(row.Id, ct))!.RawTx!;
        Assert.Equal(recorded, await relayer.Eth.Transactions.SendRawTransaction.SendRequestAsync(raw.EnsureHexPrefix()));
        await rig.Host.AgeAsync(row.Id, RecoveryAndProofTests.Stale, ct);
        rpc.RefuseNextSends(1);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var kept = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.True((PaymentStates.Settling, recorded) == (kept.State, kept.TxHash), $"{kept.State} {kept.Error} {kept.TxHash}");
        Assert.Equal(1, rpc.Sends); // the refused rebroadcast; nothing new was signed
        await rig.Chain.MineAsync(ct);
        await rig.Chain.SetAutomineAsync(true, ct);
        Assert.Equal(row.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo)); // it was mined: the payer paid
        await rig.Host.AgeAsync(row.Id, RecoveryAndProofTests.Stale, ct);

        await rig.Host.Recovery.RecoverOnceAsync(ct);

        var settled = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.True((PaymentStates.Settled, recorded) == (settled.State, settled.TxHash), $"{settled.State} {settled.Error}");
        Assert.Equal(recorded, Assert.Single(rig.Host.Sink.Lots).Value.Transaction);
        Assert.Equal(row.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo)); // paid once
    }

    /// <summary>The receipt of <paramref name="tx"/>, once the node has it (on a busy machine, a moment after the send or the mining).</summary>
    static async Task<TransactionReceipt> MinedAsync(Web3 web3, string tx, CancellationToken ct)
    {
        for (var i = 0; ; i++)
        {
            var receipt = await web3.Eth.Transactions.GetTransactionReceipt.SendRequestAsync(tx);
            if (receipt is not null || i == 200)
            {
                return Assert.IsType<TransactionReceipt>(receipt);
            }

            await Task.Delay(50, ct);
        }
    }

    static Web3 Relayer(ChainPaymentTests.Rig rig) => new(new Account(PaymentSigning.RelayerKey, 84532), rig.Chain.RpcUrl);

    static async Task<System.Numerics.BigInteger> NextNonceAsync(Web3 relayer) =>
        (await relayer.Eth.Transactions.GetTransactionCount.SendRequestAsync(relayer.TransactionManager.Account.Address, BlockParameter.CreatePending())).Value;

    /// <summary>The settlement of a crashed payment's authorization signed by the relayer with <paramref name="nonce"/>.</summary>
    static Task<string> SignSettlementAsync(ChainPaymentTests.Rig rig, PaymentRow row, System.Numerics.BigInteger nonce, long gas, System.Numerics.BigInteger? tip = null)
    {
        var request = rig.Host.App.Services.GetRequiredService<PaymentFlow>().RequestFor(row);
        var a = TransferWithAuthorization.From3009(request.Authorization);
        return Relayer(rig).Eth.GetContractTransactionHandler<TransferWithAuthorizationFunction>().SignTransactionAsync(X402Options.BaseSepoliaUsdc,
            new TransferWithAuthorizationFunction
            {
                From = a.From, To = a.To, Value = a.Value, ValidAfter = a.ValidAfter, ValidBefore = a.ValidBefore, AuthorizationNonce = a.Nonce,
                Signature = request.Signature.HexToByteArray(), Gas = gas, Nonce = nonce,
                MaxPriorityFeePerGas = tip ?? Nethereum.Web3.Web3.Convert.ToWei(1, Nethereum.Util.UnitConversion.EthUnit.Gwei),
                MaxFeePerGas = 2 * (tip ?? Nethereum.Web3.Web3.Convert.ToWei(1, Nethereum.Util.UnitConversion.EthUnit.Gwei)) + Nethereum.Web3.Web3.Convert.ToWei(2, Nethereum.Util.UnitConversion.EthUnit.Gwei),
            });
    }

    /// <summary>
    /// A payment left settling by a crash after the direct settler signed and recorded its transaction with the relayer's
    /// next nonce, and before the node kept it (it was never mined); returns the row and the recorded hash.
    /// </summary>
    static async Task<(PaymentRow Row, string Recorded)> RecordedButNeverSentAsync(ChainPaymentTests.Rig rig, CancellationToken ct)
    {
        var row = await RecoveryAndProofTests.CrashedRowAsync(rig, PaymentStates.Settling, ct);
        var raw = await SignSettlementAsync(rig, row, await NextNonceAsync(Relayer(rig)), gas: 200_000);
        var hash = "0x" + Nethereum.Util.Sha3Keccack.Current.CalculateHashFromHex(raw);
        Assert.Equal(RecordOutcome.Recorded, await rig.Host.Store.RecordTransactionAsync(row.Id, hash, raw, ct));
        return (row, hash);
    }

    /// <summary>A direct-settler rig whose freeside reaches the chain through a <see cref="RelayerRpc"/>.</summary>
    static async Task<(ChainPaymentTests.Rig Rig, RelayerRpc Rpc)> StartBehindRelayAsync(string engine, CancellationToken ct)
    {
        RelayerRpc? rpc = null;
        var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct, rpcUrl: chain =>
        {
            rpc = RelayerRpc.Start(chain.RpcUrl);
            return rpc.Url;
        });
        return (rig, rpc!);
    }

    /// <summary>
    /// The payment settled with <paramref name="transaction"/>, its one credit note names that transaction, and the payee
    /// received the payment once; returns the credit note.
    /// </summary>
    static async Task<CreditNote> AssertSettledWithAsync(ChainPaymentTests.Rig rig, PaymentRow row, string transaction, CancellationToken ct)
    {
        var settled = (await rig.Host.Store.GetAsync(row.Id, ct))!;
        Assert.True((PaymentStates.Settled, transaction) == (settled.State, settled.TxHash), $"{settled.State} {settled.Error}");
        var lot = Assert.Single(rig.Host.Sink.Lots).Value;
        Assert.Equal(transaction, lot.Transaction);
        Assert.Equal(row.ValueMicro, await rig.Chain.BalanceAsync(rig.PayTo));
        return lot;
    }
}

/// <summary>
/// A JSON-RPC relay in front of the chain. It holds the first <c>parties</c> <c>eth_getTransactionCount</c> calls until all
/// of them arrived or <c>hold</c> passed (the reads happen together, before any send), can answer the next reads one lower
/// than the chain (a node behind the one that took the last transaction), can answer the next sends or receipt reads with
/// a JSON-RPC error, and counts the sends.
/// </summary>
internal sealed class RelayerRpc : IAsyncDisposable
{
    readonly WebApplication _app;
    readonly HttpClient _http = new();
    readonly TaskCompletionSource _all = new(TaskCreationOptions.RunContinuationsAsynchronously);
    int _reads;
    int _sends;
    int _stale;
    int _failReceipts;
    int _refuseSends;

    RelayerRpc(string target, int parties, TimeSpan hold)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls($"http://127.0.0.1:{TestStorage.FreePort()}");
        _app = builder.Build();
        _app.MapPost("/", async (HttpContext context) =>
        {
            var request = await new StreamReader(context.Request.Body).ReadToEndAsync(context.RequestAborted);
            var nonceRead = request.Contains("\"eth_getTransactionCount\"", StringComparison.Ordinal);
            var stale = false;
            if (nonceRead)
            {
                if (Interlocked.Increment(ref _reads) >= parties)
                {
                    _all.TrySetResult();
                }

                await Task.WhenAny(_all.Task, Task.Delay(hold, context.RequestAborted));
                stale = Interlocked.Decrement(ref _stale) >= 0;
            }
            else if (request.Contains("\"eth_sendRawTransaction\"", StringComparison.Ordinal))
            {
                Interlocked.Increment(ref _sends);
            }

            if ((request.Contains("\"eth_getTransactionReceipt\"", StringComparison.Ordinal) && Interlocked.Decrement(ref _failReceipts) >= 0)
                || (request.Contains("\"eth_sendRawTransaction\"", StringComparison.Ordinal) && Interlocked.Decrement(ref _refuseSends) >= 0))
            {
                // A JSON-RPC error answer (as a provider's rate limit gives): the node said nothing about the transaction.
                context.Response.ContentType = "application/json";
                await context.Response.WriteAsync(new JsonObject
                {
                    ["jsonrpc"] = "2.0",
                    ["id"] = JsonNode.Parse(request)!["id"]?.DeepClone(),
                    ["error"] = new JsonObject { ["code"] = -32005, ["message"] = "request rate exceeded" },
                }.ToJsonString(), context.RequestAborted);
                return;
            }

            using var answer = await _http.PostAsync(target, new StringContent(request, Encoding.UTF8, "application/json"), context.RequestAborted);
            var text = await answer.Content.ReadAsStringAsync(context.RequestAborted);
            if (stale)
            {
                var json = JsonNode.Parse(text)!.AsObject();
                var count = Convert.ToInt64(json["result"]!.GetValue<string>(), 16);
                json["result"] = "0x" + Math.Max(0, count - 1).ToString("x", System.Globalization.CultureInfo.InvariantCulture);
                text = json.ToJsonString();
            }

            context.Response.ContentType = "application/json";
            await context.Response.WriteAsync(text, context.RequestAborted);
        });
    }

    public string Url => _app.Urls.First();

    public int NonceReads => Volatile.Read(ref _reads);

    public int Sends => Volatile.Read(ref _sends);

    /// <summary>Answers the next <paramref name="reads"/> nonce reads one lower than the chain does.</summary>
    public void LagNextNonceReads(int reads) => Volatile.Write(ref _stale, reads);

    /// <summary>Answers the next <paramref name="reads"/> receipt reads with a JSON-RPC error.</summary>
    public void FailNextReceiptReads(int reads) => Volatile.Write(ref _failReceipts, reads);

    /// <summary>Answers the next <paramref name="sends"/> transaction sends with a JSON-RPC error, without passing them on.</summary>
    public void RefuseNextSends(int sends) => Volatile.Write(ref _refuseSends, sends);

    public static RelayerRpc Start(string target, int parties = 0, TimeSpan hold = default)
    {
        var rpc = new RelayerRpc(target, parties, hold);
        rpc._app.Start();
        return rpc;
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
