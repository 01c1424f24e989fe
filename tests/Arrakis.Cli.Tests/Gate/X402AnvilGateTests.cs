using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Arrakis.Cli.Gate;
using Arrakis.Freeside.Payments;
using Arrakis.Freeside.Seeding;
using Arrakis.Shared.Storage;
using Arrakis.Shared.Tokens;
using Dapper;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Nethereum.Signer;

namespace Arrakis.Cli.Tests.Gate;

/// <summary>
/// P1-8's on-chain step for real: a local anvil chain (chain id 84532) with the test EIP-3009 token at the Base Sepolia
/// USDC address, the three services in-process with freeside's legacy <c>X-Payment-Proof</c> path reading that chain,
/// and the gate paying the 402 with <c>SEPOLIA_RPC_URL</c> / <c>STAGING_WALLET_KEY</c> pointed at anvil.
/// </summary>
public sealed class X402AnvilGateTests
{
    const long WalletUsdc = 5_000_000;
    const long GasWei = 100_000_000_000_000_000;

    [Fact]
    public async Task A_funded_wallet_pays_the_402_in_USDC_and_the_credit_lot_lands_in_the_ledger()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await Rig.StartAsync(ct);
        var (key, address) = FreshWallet();
        await rig.Chain.SetEtherAsync(address, GasWei, ct);
        await rig.Chain.MintAsync(address, WalletUsdc);
        var amount = await rig.QuotedAmountAsync(ct);

        var run = await rig.RunGateAsync(key);

        var x402 = run.Records.Where(r => r.Phase == "x402").ToArray();
        Assert.True(x402.All(r => r.Status == "PASS"), run.Console);
        Assert.Equal(["x402 402 response with payment headers", "x402 on-chain settlement + credit note issued"], x402.Select(r => r.Name).ToArray());
        Assert.Equal("PASS", run.JsonResult("x402 on-chain settlement + credit note issued").GetProperty("status").GetString());
        Assert.DoesNotContain(run.ConsoleLines, l => l.Contains("SKIP: On-chain payment", StringComparison.Ordinal));

        // The USDC moved on chain: exactly the 402's amount, from the gate's wallet to freeside's payTo.
        var tx = Assert.Single(run.ConsoleLines, l => l.StartsWith("    Transaction: ", StringComparison.Ordinal))["    Transaction: ".Length..];
        Assert.Equal(1, (int)(await rig.Chain.ReceiptStatusAsync(tx)).Value);
        Assert.Equal(amount, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Equal(WalletUsdc - amount, await rig.Chain.BalanceAsync(address));

        // Freeside settled that transaction once and the whole payment became an x402 credit lot of the token's community.
        var payment = await rig.Payments.FindByTxAsync(tx.ToLowerInvariant(), ct);
        Assert.NotNull(payment);
        Assert.Equal((PaymentStates.Settled, "proof", Seeder.CommunityId, amount, address.ToLowerInvariant()),
            (payment.State, payment.Kind, payment.CommunityId, payment.CreditMicro ?? -1, payment.Payer));
        Assert.Contains($"    Credit note: {payment.CreditNoteId} ({amount} micro-USD, lot {payment.CreditLotId}, community {Seeder.CommunityId})", run.ConsoleLines);
        var lot = Assert.Single(await rig.X402LotsAsync(ct));
        Assert.Equal((payment.CreditLotId, Seeder.CommunityId, "x402", amount, amount), (lot.Id, lot.CommunityId, lot.Source, lot.AmountMicro, lot.RemainingMicro));
    }

    [Fact]
    public async Task Without_money_or_a_usable_key_the_step_fails_and_nothing_is_credited()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await Rig.StartAsync(ct);

        // Unfunded: no gas and no USDC.
        var (unfunded, _) = FreshWallet();
        var run = await rig.RunGateAsync(unfunded);
        AssertPaymentFailed(run);

        // Gas but no USDC: the node says the transfer reverts, so nothing is sent (as cast send refuses it).
        var (gasOnly, gasOnlyAddress) = FreshWallet();
        await rig.Chain.SetEtherAsync(gasOnlyAddress, GasWei, ct);
        run = await rig.RunGateAsync(gasOnly);
        AssertPaymentFailed(run);
        Assert.Contains(run.ConsoleLines, l => l.StartsWith("    Payment failed: eth_estimateGas: ", StringComparison.Ordinal) && l.Contains("transfer amount exceeds balance", StringComparison.Ordinal));

        // Not a private key at all.
        run = await rig.RunGateAsync("0xnot-a-key");
        AssertPaymentFailed(run);
        Assert.Contains("    Payment failed: STAGING_WALLET_KEY is not a hex private key", run.ConsoleLines);

        Assert.Equal(0, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Empty(await rig.X402LotsAsync(ct));
    }

    [Fact]
    public async Task A_payment_freeside_does_not_credit_fails_the_step()
    {
        // Freeside wants more confirmations than the (automining) chain has when the proof arrives: the USDC moves, but
        // the paid retry is answered 402 proof-pending with no credit note, and the gate must not call that a pass.
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await Rig.StartAsync(ct, new Dictionary<string, string?> { ["X402:Confirmations"] = "5" });
        var (key, address) = FreshWallet();
        await rig.Chain.SetEtherAsync(address, GasWei, ct);
        await rig.Chain.MintAsync(address, WalletUsdc);
        var amount = await rig.QuotedAmountAsync(ct);

        var run = await rig.RunGateAsync(key);

        var failure = Assert.Single(run.Records, r => r.Name == "x402 on-chain settlement");
        Assert.Equal(("FAIL", "PLATFORM_BUG"), (failure.Status, failure.Classification));
        Assert.Contains($"not credited: HTTP 402 {X402Errors.ProofPending}", failure.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain(run.Records, r => r.Name.Contains("credit note issued", StringComparison.Ordinal));
        Assert.Equal(2, run.ExitCode);
        Assert.Equal(amount, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Empty(await rig.X402LotsAsync(ct));
    }

    static void AssertPaymentFailed(GateRun run)
    {
        var failure = Assert.Single(run.Records, r => r.Name == "x402 on-chain payment");
        Assert.Equal(("FAIL", "EXTERNAL_OUTAGE", "transaction failed (check Sepolia RPC)"), (failure.Status, failure.Classification, failure.Detail));
        Assert.DoesNotContain(run.Records, r => r.Name.StartsWith("x402 on-chain settlement", StringComparison.Ordinal));
        Assert.Equal(2, run.ExitCode);
    }

    static (string Key, string Address) FreshWallet()
    {
        var key = EthECKey.GenerateKey();
        return ("0x" + Convert.ToHexStringLower(key.GetPrivateKeyAsBytes()), key.GetPublicAddress());
    }

    sealed record Lot(string Id, string CommunityId, string Source, long AmountMicro, long RemainingMicro);

    sealed class Rig : IAsyncDisposable
    {
        Rig(AnvilChain chain, Platform platform, string payTo, string keyPath)
        {
            Chain = chain;
            Platform = platform;
            PayTo = payTo;
            KeyPath = keyPath;
        }

        public AnvilChain Chain { get; }

        public Platform Platform { get; }

        public string PayTo { get; }

        public string KeyPath { get; }

        public PaymentStore Payments => Platform.Freeside.Services.GetRequiredService<PaymentStore>();

        /// <summary>anvil, then the platform with freeside's x402 reading it (as <c>loa up</c> with <c>X402__*</c> set), seeded, with a test key on disk.</summary>
        public static async Task<Rig> StartAsync(CancellationToken ct, IDictionary<string, string?>? extra = null)
        {
            var chain = await AnvilChain.StartAsync(ct);
            try
            {
                var payTo = EthECKey.GenerateKey().GetPublicAddress();
                var settings = new Dictionary<string, string?> { ["X402:RpcUrl"] = chain.RpcUrl, ["X402:PayTo"] = payTo };
                foreach (var (k, v) in extra ?? new Dictionary<string, string?>())
                {
                    settings[k] = v;
                }

                var platform = await Platform.StartAsync("sqlite", settings);
                await Seeder.For(platform.Freeside.Services.GetRequiredService<Database>()).SeedAsync(ct);
                var keyPath = Path.Combine(platform.DataDir, "staging.pem");
                await File.WriteAllTextAsync(keyPath, platform.Freeside.Services.GetRequiredService<Keyring>().Current.Active!.Private!.ExportPkcs8PrivateKeyPem() + "\n", ct);
                return new Rig(chain, platform, payTo, keyPath);
            }
            catch
            {
                await chain.DisposeAsync();
                throw;
            }
        }

        /// <summary>The amount freeside's 402 asks for the gate's x402 body.</summary>
        public async Task<long> QuotedAmountAsync(CancellationToken ct)
        {
            using var http = new HttpClient();
            using var response = await http.PostAsync(Platform.FreesideUrl + PaymentsApi.InvokePath, new StringContent(GateRunner.X402Body, System.Text.Encoding.UTF8, "application/json"), ct);
            Assert.Equal(HttpStatusCode.PaymentRequired, response.StatusCode);
            var body = await response.Content.ReadFromJsonAsync<JsonElement>(ct);
            Assert.Equal(PayTo, body.GetProperty("paymentAddress").GetString());
            Assert.Equal(X402Options.BaseSepoliaUsdc, body.GetProperty("asset").GetString());
            return long.Parse(body.GetProperty("amount").GetString()!, System.Globalization.CultureInfo.InvariantCulture);
        }

        /// <summary>The full gate (key, community, JSON) with the on-chain step pointed at anvil.</summary>
        public Task<GateRun> RunGateAsync(string walletKey) => GateHarness.RunGateAsync(new GateSettings
        {
            FreesideUrl = Platform.FreesideUrl,
            DixieUrl = Platform.DixieUrl,
            TestKeyPath = KeyPath,
            CommunityId = Seeder.CommunityId,
            Json = true,
            SepoliaRpcUrl = Chain.RpcUrl,
            StagingWalletKey = walletKey,
        });

        public async Task<IReadOnlyList<Lot>> X402LotsAsync(CancellationToken ct)
        {
            await using var c = await Platform.Freeside.Services.GetRequiredService<Database>().OpenAsync(ct);
            return (await c.QueryAsync<Lot>(new CommandDefinition(
                "SELECT id AS Id, community_id AS CommunityId, source AS Source, amount_micro AS AmountMicro, remaining_micro AS RemainingMicro FROM credit_lots WHERE source = 'x402'",
                cancellationToken: ct))).ToList();
        }

        public async ValueTask DisposeAsync()
        {
            await Platform.DisposeAsync();
            await Chain.DisposeAsync();
        }
    }
}
