using System.Numerics;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Payments;
using Nethereum.ABI.FunctionEncoding.Attributes;
using Nethereum.Contracts;
using Nethereum.Hex.HexConvertors.Extensions;
using Nethereum.Web3;
using Nethereum.Web3.Accounts;

namespace Arrakis.Freeside.Tests.Payments;

[Function("approve", "bool")]
public sealed class ApproveFunction : FunctionMessage
{
    [Parameter("address", "spender", 1)] public string Spender { get; set; } = "";
    [Parameter("uint256", "value", 2)] public BigInteger Value { get; set; }
}

[Function("transferFrom", "bool")]
public sealed class TransferFromFunction : FunctionMessage
{
    [Parameter("address", "from", 1)] public string From { get; set; } = "";
    [Parameter("address", "to", 2)] public string To { get; set; } = "";
    [Parameter("uint256", "value", 3)] public BigInteger Value { get; set; }
}

/// <summary>
/// The legacy X-Payment-Proof path credits only a plain USDC <c>transfer(payTo, amount)</c> sent by the payer: an EIP-3009
/// settlement (already counted on the x402 path), a third party's <c>transferFrom</c> or any other call that happens to
/// move USDC to payTo is refused, on anvil.
/// </summary>
public sealed class LegacyProofTests
{
    static readonly JsonObject Body = new() { ["prompt"] = "x402 payment test", ["model"] = "cheap" };

    public static TheoryData<string, string> EnginesAndTransactions()
    {
        var data = new TheoryData<string, string>();
        foreach (var engine in TestStorage.Engines())
        {
            foreach (var kind in new[] { "eip3009", "eip3009-credited-by-x402", "transfer-from", "mint" })
            {
                data.Add(engine.Data, kind);
            }
        }

        return data;
    }

    /// <summary>Asks for the 402, then the payer sends payTo the amount it names (plus <paramref name="extra"/>) as a plain USDC transfer.</summary>
    static async Task<(long Amount, string Tx)> PayTheChallengeAsync(ChainPaymentTests.Rig rig, CancellationToken ct, long extra = 0)
    {
        var (_, v1) = await rig.Host.ChallengeAsync(Body, ct);
        var amount = long.Parse(v1["amount"]!.GetValue<string>());
        await rig.Chain.SetEtherAsync(rig.Payer, 1_000_000_000_000_000_000, ct);
        return (amount, await SendAsync(rig.Chain, rig.PayerKey, new TransferFunction { To = rig.PayTo, Value = amount + extra }));
    }

    static async Task<string> SendAsync<T>(AnvilChain chain, string key, T message)
        where T : FunctionMessage, new()
    {
        var receipt = await new Web3(new Account(key, 84532), chain.RpcUrl).Eth.GetContractTransactionHandler<T>()
            .SendRequestAndWaitForReceiptAsync(X402Options.BaseSepoliaUsdc, message);
        Assert.Equal(1, (int)receipt.Status.Value);
        return receipt.TransactionHash;
    }

    [Theory]
    [MemberData(nameof(EnginesAndTransactions))]
    public async Task A_transaction_that_is_not_the_payers_plain_transfer_is_never_credited(string engine, string kind)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var (_, v1) = await rig.Host.ChallengeAsync(Body, ct);
        var amount = long.Parse(v1["amount"]!.GetValue<string>());
        var thirdParty = PaymentSigning.FreshKey();
        await rig.Chain.SetEtherAsync(PaymentSigning.AddressOf(thirdParty), 1_000_000_000_000_000_000, ct);
        await rig.Chain.SetEtherAsync(rig.Payer, 1_000_000_000_000_000_000, ct);
        var settledByX402 = 0;
        string tx;
        (int Status, string Code) expected;
        switch (kind)
        {
            case "eip3009":
                // The payer's x402 authorization, settled on chain by someone else's facilitator: that money was counted there.
                var a = PaymentSigning.Authorization(rig.PayerKey, rig.PayTo, amount, 0, DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 300);
                tx = await SendAsync(rig.Chain, thirdParty, new TransferWithAuthorizationFunction
                {
                    From = a.From, To = a.To, Value = amount, ValidAfter = 0, ValidBefore = BigInteger.Parse(a.ValidBefore), AuthorizationNonce = a.Nonce.HexToByteArray(),
                    Signature = PaymentSigning.Sign(rig.Host.Options, a, rig.PayerKey).HexToByteArray(),
                });
                expected = (402, X402Errors.ProofIsSettlement);
                break;
            case "eip3009-credited-by-x402":
                // Our own x402 settlement of a paid call, presented again as a proof by somebody else.
                var (header, _, _) = await ChainPaymentTests.SignAsync(rig, Body, ct);
                using (var paid = await rig.Host.PostAsync(Body, ChainPaymentTests.V2(header), rig.Host.UserToken("community-paid"), ct))
                {
                    Assert.Equal(200, (int)paid.StatusCode);
                    tx = X402Codec.DecodeNode(paid.Headers.GetValues("PAYMENT-RESPONSE").Single())!["transaction"]!.GetValue<string>();
                }

                settledByX402 = 1;
                expected = (409, X402Errors.TransactionClaimed);
                break;
            case "transfer-from":
                // A third party moves the payer's approved funds to payTo.
                await SendAsync(rig.Chain, rig.PayerKey, new ApproveFunction { Spender = PaymentSigning.AddressOf(thirdParty), Value = amount });
                tx = await SendAsync(rig.Chain, thirdParty, new TransferFromFunction { From = rig.Payer, To = rig.PayTo, Value = amount });
                expected = (402, X402Errors.ProofInvalid);
                break;
            default:
                // Any other call that emits a Transfer to payTo (here the test token's open mint).
                tx = await SendAsync(rig.Chain, thirdParty, new MintFunction { To = rig.PayTo, Value = amount });
                expected = (402, X402Errors.ProofInvalid);
                break;
        }

        var lotsBefore = rig.Host.Sink.Lots.Count;
        Assert.Equal(settledByX402, lotsBefore);
        using var response = await rig.Host.PostAsync(Body, PaymentSigning.ProofHeaders(tx, thirdParty), rig.Host.UserToken("community-proof"), ct);
        var body = await ChainPaymentTests.JsonAsync(response, ct);
        Assert.True(expected == ((int)response.StatusCode, body["error"]?.GetValue<string>() ?? ""), body.ToJsonString());
        Assert.Null(body["creditNote"]);
        Assert.Equal(lotsBefore, rig.Host.Sink.Lots.Count);
        Assert.DoesNotContain(rig.Host.Sink.Lots.Values, lot => lot.CommunityId == "community-proof");
        Assert.Equal(settledByX402, await rig.Host.Store.CountAsync(PaymentStates.Settled, ct));
        Assert.Equal(0, await rig.Host.Store.CountAsync(PaymentStates.Settling, ct));
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task The_payers_own_plain_transfer_is_credited_to_the_payer(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var (amount, tx) = await PayTheChallengeAsync(rig, ct, extra: 7);

        using var response = await rig.Host.PostAsync(Body, PaymentSigning.ProofHeaders(tx, rig.PayerKey), rig.Host.UserToken("community-proof"), ct);
        var body = await ChainPaymentTests.JsonAsync(response, ct);
        Assert.True(200 == (int)response.StatusCode, body.ToJsonString());
        Assert.Equal(rig.Payer, body["creditNote"]!["payer"]!.GetValue<string>(), ignoreCase: true);
        Assert.Equal(amount + 7, body["creditNote"]!["amountMicro"]!.GetValue<long>());
        var lot = Assert.Single(rig.Host.Sink.Lots).Value;
        Assert.Equal(("community-proof", amount + 7, tx), (lot.CommunityId, lot.AmountMicro, lot.Transaction));
    }

    /// <summary>
    /// A proof presented without a bearer token names no community to credit: it must be refused before the transaction
    /// is claimed, so the payer can present it again with a token. It was claimed and answered 200 with a credit note that
    /// no lot backed, and the later presentation with a token only replayed that: the whole payment was credited nowhere.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_proof_without_a_community_to_credit_is_refused_and_can_be_presented_again(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var (amount, tx) = await PayTheChallengeAsync(rig, ct);

        using var anonymous = await rig.Host.PostAsync(Body, PaymentSigning.ProofHeaders(tx, rig.PayerKey), ct: ct);
        var refused = await ChainPaymentTests.JsonAsync(anonymous, ct);
        Assert.True(401 == (int)anonymous.StatusCode, refused.ToJsonString());
        Assert.Equal("UNAUTHORIZED", refused["error"]!.GetValue<string>());
        Assert.Null(await rig.Host.Store.FindByTxAsync(tx, ct));

        using var response = await rig.Host.PostAsync(Body, PaymentSigning.ProofHeaders(tx, rig.PayerKey), rig.Host.UserToken("community-late"), ct);
        var body = await ChainPaymentTests.JsonAsync(response, ct);
        Assert.True(200 == (int)response.StatusCode, body.ToJsonString());
        var lot = Assert.Single(rig.Host.Sink.Lots).Value;
        Assert.Equal(("community-late", amount, tx), (lot.CommunityId, lot.AmountMicro, lot.Transaction));
    }

    // Pure checks of LegacyProof.Check on hand-built transactions (no chain): the edges a real chain rarely produces.
    static readonly X402Options O = new() { PayTo = "0x00000000000000000000000000000000000000aa" };
    const string Payer = "0x00000000000000000000000000000000000000bb";
    static readonly string TransferTopic = "0x" + Nethereum.Util.Sha3Keccack.Current.CalculateHash("Transfer(address,address,uint256)");

    static string Word(string hexNoPrefix) => hexNoPrefix.PadLeft(64, '0');

    static string TransferInput(string to, long amount, string extra = "") => "0xa9059cbb" + Word(to[2..]) + Word(amount.ToString("x")) + extra;

    static (string?, string[], string?)[] TransferLog(string from, string to, long amount) =>
        [(O.Asset, [TransferTopic, "0x" + Word(from[2..]), "0x" + Word(to[2..])], "0x" + Word(amount.ToString("x")))];

    [Fact]
    public void A_plain_transfer_with_its_transfer_log_pays_the_sender()
    {
        var check = LegacyProof.Check(O, Payer, O.Asset, 0, TransferInput(O.PayTo, 5_000), TransferLog(Payer, O.PayTo, 5_000));
        Assert.Equal((Payer, new BigInteger(5_000), (string?)null), (check.Payer, check.Paid, check.Code));
    }

    public static TheoryData<string, string> Refusals() => new()
    {
        { "trailing calldata", X402Errors.ProofInvalid },
        { "dirty address word", X402Errors.ProofInvalid },
        { "log from someone else", X402Errors.ProofInvalid },
        { "log of another amount", X402Errors.ProofInvalid },
        { "another recipient", X402Errors.RecipientMismatch },
        { "authorization used", X402Errors.ProofIsSettlement },
        { "native disabled", X402Errors.RecipientMismatch },
        { "another contract", X402Errors.ProofInvalid },
    };

    [Theory]
    [MemberData(nameof(Refusals))]
    public void Anything_but_that_is_refused_with_its_code(string kind, string code)
    {
        var input = TransferInput(O.PayTo, 5_000);
        var logs = TransferLog(Payer, O.PayTo, 5_000);
        var to = O.Asset;
        switch (kind)
        {
            case "trailing calldata": input += "00"; break;
            case "dirty address word": input = "0xa9059cbb" + "ff" + Word(O.PayTo[2..])[2..] + Word(5_000.ToString("x")); break;
            case "log from someone else": logs = TransferLog("0x00000000000000000000000000000000000000cc", O.PayTo, 5_000); break;
            case "log of another amount": logs = TransferLog(Payer, O.PayTo, 4_999); break;
            case "another recipient":
                input = TransferInput("0x00000000000000000000000000000000000000cc", 5_000);
                logs = TransferLog(Payer, "0x00000000000000000000000000000000000000cc", 5_000);
                break;
            case "authorization used":
                logs = [.. logs, (O.Asset, ["0x" + Nethereum.Util.Sha3Keccack.Current.CalculateHash("AuthorizationUsed(address,bytes32)"), "0x" + Word(Payer[2..]), "0x" + Word("1")], "0x")];
                break;
            case "native disabled": to = O.PayTo; input = "0x"; logs = []; break;
            default: to = "0x00000000000000000000000000000000000000dd"; break;
        }

        var check = LegacyProof.Check(O, Payer, to, kind == "native disabled" ? 5_000 : 0, input, logs);
        Assert.Equal(code, check.Code);
        Assert.Null(check.Payer);
    }
    /// <summary>
    /// A mined transaction hash is public: without the payer's signature, whoever presents it first would have its credit
    /// note issued to their own community. The old path credited an unsigned proof from anyone.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Only_the_payer_can_present_its_transaction(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct);
        var (amount, tx) = await PayTheChallengeAsync(rig, ct);
        var thief = PaymentSigning.FreshKey();

        async Task<(int Status, JsonObject Body)> PresentAsync(Dictionary<string, string> headers, string community)
        {
            using var response = await rig.Host.PostAsync(Body, headers, rig.Host.UserToken(community), ct);
            return ((int)response.StatusCode, await ChainPaymentTests.JsonAsync(response, ct));
        }

        var unsigned = await PresentAsync(new Dictionary<string, string> { [X402Headers.XPaymentProof] = tx }, "community-thief");
        Assert.True((402, X402Errors.ProofSignatureRequired) == (unsigned.Status, unsigned.Body["error"]!.GetValue<string>()), unsigned.Body.ToJsonString());
        var signedByThief = await PresentAsync(PaymentSigning.ProofHeaders(tx, thief), "community-thief");
        Assert.True((402, X402Errors.ProofNotSignedByPayer) == (signedByThief.Status, signedByThief.Body["error"]!.GetValue<string>()), signedByThief.Body.ToJsonString());
        var garbled = await PresentAsync(new Dictionary<string, string> { [X402Headers.XPaymentProof] = tx, [X402Headers.XPaymentProofSignature] = "0x1234" }, "community-thief");
        Assert.Equal((402, X402Errors.ProofNotSignedByPayer), (garbled.Status, garbled.Body["error"]!.GetValue<string>()));
        Assert.Empty(rig.Host.Sink.Lots);

        var payer = await PresentAsync(PaymentSigning.ProofHeaders(tx, rig.PayerKey), "community-payer");
        Assert.True(200 == payer.Status, payer.Body.ToJsonString());
        Assert.Equal("community-payer", Assert.Single(rig.Host.Sink.Lots).Value.CommunityId);

        // The stored answer, with its credit note, is replayed to the payer only.
        var replayToThief = await PresentAsync(PaymentSigning.ProofHeaders(tx, thief), "community-thief");
        Assert.Equal((402, X402Errors.ProofNotSignedByPayer), (replayToThief.Status, replayToThief.Body["error"]!.GetValue<string>()));
        Assert.Null(replayToThief.Body["creditNote"]);
        var replayToPayer = await PresentAsync(PaymentSigning.ProofHeaders(tx, rig.PayerKey), "community-payer");
        Assert.Equal(200, replayToPayer.Status);
        Assert.Single(rig.Host.Sink.Lots);
    }

    [Fact]
    public async Task A_deployment_can_accept_unsigned_proofs()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync("sqlite", "Direct", ct, new Dictionary<string, string?> { ["X402:LegacyProofRequiresPayerSignature"] = "false" });
        var (amount, tx) = await PayTheChallengeAsync(rig, ct);
        using var response = await rig.Host.PostAsync(Body, new Dictionary<string, string> { [X402Headers.XPaymentProof] = tx }, rig.Host.UserToken("community-proof"), ct);
        Assert.Equal(200, (int)response.StatusCode);
        Assert.Single(rig.Host.Sink.Lots);
    }
}
