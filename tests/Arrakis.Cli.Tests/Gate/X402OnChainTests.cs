using System.Collections.Concurrent;
using System.Numerics;
using System.Text.Json;
using Arrakis.Cli.Gate;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Nethereum.Hex.HexConvertors.Extensions;
using Nethereum.Model;
using Nethereum.Signer;
using Nethereum.Util;

namespace Arrakis.Cli.Tests.Gate;

/// <summary>P1-8's optional on-chain step against a loopback JSON-RPC node (the chain is a true external party).</summary>
public sealed class X402OnChainTests
{
    const string WalletKey = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";

    [Fact]
    public async Task With_a_wallet_the_gate_pays_on_chain_and_reposts_the_proof()
    {
        await using var harness = await GateHarness.StartAsync();
        await using var node = await FakeNode.StartAsync();
        var run = await harness.RunAsync(harness.Settings(s => s with { SepoliaRpcUrl = node.Url, StagingWalletKey = WalletKey }));

        var x402 = run.Records.Where(r => r.Phase == "x402").ToArray();
        Assert.Equal(["x402 402 response with payment headers", "x402 on-chain settlement + credit note issued"], x402.Select(r => r.Name).ToArray());
        Assert.All(x402, r => Assert.Equal("PASS", r.Status));
        Assert.Equal(8, run.Document.GetProperty("p1").GetProperty("pass").GetInt32());
        Assert.Equal(0, run.ExitCode);

        // The raw transaction is a signed value transfer from the wallet to the 402's paymentAddress for its amount.
        var raw = Assert.Single(node.RawTransactions);
        var tx = Assert.IsType<LegacyTransactionChainId>(TransactionFactory.CreateTransaction(raw));
        Assert.Equal(new EthECKey(WalletKey[2..]).GetPublicAddress(), TransactionVerificationAndRecovery.GetSenderAddress(raw), ignoreCase: true);
        Assert.Equal("0x00000000000000000000000000000000000000a1", tx.ReceiveAddress.ToHex(true), ignoreCase: true);
        Assert.Equal(new BigInteger(1000), new BigInteger(tx.Value, isUnsigned: true, isBigEndian: true));
        Assert.Equal(new BigInteger(84532), tx.GetChainIdAsBigInteger());
        Assert.Equal([node.TxHash], harness.Fake.PaymentProofs.ToArray());
    }

    [Fact]
    public async Task A_reverted_transaction_is_a_failed_payment_and_no_proof_is_sent()
    {
        await using var harness = await GateHarness.StartAsync();
        await using var node = await FakeNode.StartAsync();
        node.ReceiptStatus = "0x0";
        var run = await harness.RunAsync(harness.Settings(s => s with { SepoliaRpcUrl = node.Url, StagingWalletKey = WalletKey }));

        var failure = Assert.Single(run.Records, r => r.Name == "x402 on-chain payment");
        Assert.Equal(("FAIL", "EXTERNAL_OUTAGE"), (failure.Status, failure.Classification));
        Assert.Contains($"    Payment failed: transaction {node.TxHash} reverted (status 0)", run.ConsoleLines);
        Assert.Empty(harness.Fake.PaymentProofs);
        Assert.Equal(2, run.ExitCode);
    }

    [Fact]
    public async Task A_paid_answer_without_a_credit_note_fails()
    {
        await using var harness = await GateHarness.StartAsync(new FakeBehaviour { X402NoCreditNote = true });
        await using var node = await FakeNode.StartAsync();
        var run = await harness.RunAsync(harness.Settings(s => s with { SepoliaRpcUrl = node.Url, StagingWalletKey = WalletKey }));

        var failure = Assert.Single(run.Records, r => r.Name == "x402 on-chain settlement");
        Assert.Equal(("FAIL", "PLATFORM_BUG", $"payment {node.TxHash} accepted but no credit note issued"), (failure.Status, failure.Classification, failure.Detail));
        Assert.Equal([node.TxHash], harness.Fake.PaymentProofs.ToArray());
        Assert.Equal(2, run.ExitCode);
    }

    /// <summary>§2.9: the paid retry "returns 2xx with creditNote"; the original read it with <c>curl -sf</c> and <c>.creditNote // .credit_note</c>.</summary>
    [Theory]
    [InlineData(201, false)]
    [InlineData(200, true)]
    public async Task A_credit_note_in_any_2xx_answer_passes(int status, bool noteAsId)
    {
        await using var harness = await GateHarness.StartAsync(new FakeBehaviour { X402PaidStatus = status, X402CreditNoteId = noteAsId });
        await using var node = await FakeNode.StartAsync();
        var run = await harness.RunAsync(harness.Settings(s => s with { SepoliaRpcUrl = node.Url, StagingWalletKey = WalletKey }));

        var x402 = run.Records.Where(r => r.Phase == "x402").ToArray();
        Assert.True(x402.All(r => r.Status == "PASS"), run.Console);
        Assert.Equal(["x402 402 response with payment headers", "x402 on-chain settlement + credit note issued"], x402.Select(r => r.Name).ToArray());
        Assert.Equal(0, run.ExitCode);
    }

    [Fact]
    public async Task A_failing_RPC_is_an_external_outage()
    {
        await using var harness = await GateHarness.StartAsync();
        var run = await harness.RunAsync(harness.Settings(s => s with { SepoliaRpcUrl = $"http://127.0.0.1:{TestStorage.FreePort()}", StagingWalletKey = WalletKey }));

        var failure = Assert.Single(run.Records, r => r.Name == "x402 on-chain payment");
        Assert.Equal(("FAIL", "EXTERNAL_OUTAGE", "transaction failed (check Sepolia RPC)"), (failure.Status, failure.Classification, failure.Detail));
        Assert.Equal(2, run.ExitCode);
    }

    /// <summary>An RPC URL nothing can post to is a failed transaction (cast fails the same way), not an abort without a report.</summary>
    [Theory]
    [InlineData("localhost:8545")]
    [InlineData("not a url")]
    public async Task An_unusable_RPC_URL_is_an_external_outage(string rpcUrl)
    {
        await using var harness = await GateHarness.StartAsync();
        var run = await harness.RunAsync(harness.Settings(s => s with { SepoliaRpcUrl = rpcUrl, StagingWalletKey = WalletKey }));

        var failure = Assert.Single(run.Records, r => r.Name == "x402 on-chain payment");
        Assert.Equal(("FAIL", "EXTERNAL_OUTAGE", "transaction failed (check Sepolia RPC)"), (failure.Status, failure.Classification, failure.Detail));
        Assert.Equal(2, run.ExitCode);
        Assert.Equal(2, run.Document.GetProperty("exit_code").GetInt32());
    }

    sealed class FakeNode : IAsyncDisposable
    {
        readonly WebApplication _app;

        FakeNode(WebApplication app, string url)
        {
            _app = app;
            Url = url;
        }

        public string Url { get; }

        public string TxHash { get; } = "0x" + new string('a', 64);

        public ConcurrentQueue<string> RawTransactions { get; } = new();

        public string ReceiptStatus { get; set; } = "0x1";

        public static Task<FakeNode> StartAsync() => TestStorage.RetryOnPortClashAsync(StartOnceAsync);

        static async Task<FakeNode> StartOnceAsync()
        {
            var url = $"http://127.0.0.1:{TestStorage.FreePort()}";
            var builder = WebApplication.CreateSlimBuilder();
            builder.WebHost.UseUrls(url);
            builder.Logging.ClearProviders();
            var app = builder.Build();
            var node = new FakeNode(app, url);
            app.MapPost("/", async (HttpContext context) =>
            {
                using var doc = await JsonDocument.ParseAsync(context.Request.Body);
                var method = doc.RootElement.GetProperty("method").GetString();
                var parameters = doc.RootElement.GetProperty("params");
                object result = method switch
                {
                    "eth_chainId" => "0x14a34",
                    "eth_getTransactionCount" => "0x3",
                    "eth_gasPrice" => "0x3b9aca00",
                    "eth_estimateGas" => "0x5208",
                    "eth_sendRawTransaction" => node.Record(parameters[0].GetString()!),
                    "eth_getTransactionReceipt" => new { transactionHash = parameters[0].GetString(), status = node.ReceiptStatus },
                    _ => null!,
                };
                return result is null
                    ? Results.Json(new { jsonrpc = "2.0", id = 1, error = new { code = -32601, message = "method not found" } })
                    : Results.Json(new { jsonrpc = "2.0", id = 1, result });
            });
            await app.StartAsync();
            return node;
        }

        string Record(string raw)
        {
            RawTransactions.Enqueue(raw);
            return TxHash;
        }

        public async ValueTask DisposeAsync()
        {
            await _app.StopAsync();
            await _app.DisposeAsync();
        }
    }
}
