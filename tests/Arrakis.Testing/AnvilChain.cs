using System.Diagnostics;
using System.Net.Http.Json;
using System.Numerics;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Payments;
using Nethereum.ABI.FunctionEncoding.Attributes;
using Nethereum.Contracts;
using Nethereum.Hex.HexTypes;
using Nethereum.Web3;
using Nethereum.Web3.Accounts;

namespace Arrakis.Testing;

[Function("mint")]
public sealed class MintFunction : FunctionMessage
{
    [Parameter("address", "to", 1)] public string To { get; set; } = "";
    [Parameter("uint256", "value", 2)] public BigInteger Value { get; set; }
}

[Function("transfer", "bool")]
public sealed class TransferFunction : FunctionMessage
{
    [Parameter("address", "to", 1)] public string To { get; set; } = "";
    [Parameter("uint256", "value", 2)] public BigInteger Value { get; set; }
}

[Function("cancelAuthorization")]
public sealed class CancelAuthorizationFunction : FunctionMessage
{
    [Parameter("address", "authorizer", 1)] public string Authorizer { get; set; } = "";
    [Parameter("bytes32", "nonce", 2)] public byte[] AuthorizationNonce { get; set; } = [];
    [Parameter("bytes", "signature", 3)] public byte[] Signature { get; set; } = [];
}

/// <summary>
/// A local anvil chain (chain id 84532, from the npm package in tests/x402-chain) with the test-only EIP-3009 token
/// compiled by solc and placed at the real Base Sepolia USDC address with anvil_setCode. Killed by PID on dispose.
/// Used by freeside's payment tests and by the launch gate's on-chain step tests.
/// </summary>
public sealed class AnvilChain : IAsyncDisposable
{
    /// <summary>anvil dev key #3: mints and makes plain transfers, so it never races the relayer's nonces.</summary>
    public const string FunderKey = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";

    static string? _bytecode;
    readonly Process _anvil;

    AnvilChain(Process anvil, string rpcUrl)
    {
        _anvil = anvil;
        RpcUrl = rpcUrl;
    }

    public string RpcUrl { get; }

    public static string ToolsDir
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                var candidate = Path.Combine(dir.FullName, "tests", "x402-chain");
                if (File.Exists(Path.Combine(candidate, "package.json")))
                {
                    if (!Directory.Exists(Path.Combine(candidate, "node_modules")))
                    {
                        throw new InvalidOperationException($"Run 'npm ci' in {candidate} first (scripts/test.sh does).");
                    }

                    return candidate;
                }
            }

            throw new InvalidOperationException("tests/x402-chain not found above " + AppContext.BaseDirectory);
        }
    }

    public static async Task<AnvilChain> StartAsync(CancellationToken ct)
    {
        var port = TestStorage.FreePort();
        var binary = Path.Combine(ToolsDir, "node_modules", "@foundry-rs", "anvil-linux-amd64", "bin", "anvil");
        var anvil = Process.Start(new ProcessStartInfo(binary, ["--host", "127.0.0.1", "--port", port.ToString(), "--chain-id", "84532", "--silent"])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        }) ?? throw new InvalidOperationException("anvil did not start");
        var chain = new AnvilChain(anvil, $"http://127.0.0.1:{port}");
        try
        {
            using var http = new HttpClient();
            for (var i = 0; ; i++)
            {
                try
                {
                    if ((await chain.RpcAsync(http, "eth_chainId", new JsonArray(), ct))?.GetValue<string>() == "0x14a34")
                    {
                        break;
                    }
                }
                catch (HttpRequestException) when (i < 100)
                {
                    await Task.Delay(100, ct);
                }
            }

            await chain.RpcAsync(http, "anvil_setCode", new JsonArray(X402Options.BaseSepoliaUsdc, await BytecodeAsync(ct)), ct);
            return chain;
        }
        catch
        {
            await chain.DisposeAsync();
            throw;
        }
    }

    static async Task<string> BytecodeAsync(CancellationToken ct)
    {
        if (_bytecode is not null)
        {
            return _bytecode;
        }

        var (code, stdout, stderr) = await NodeTool.RunAsync(ToolsDir, ["compile.mjs"], new Dictionary<string, string>(), ct);
        Assert.True(code == 0, "solc compile failed: " + stderr);
        return _bytecode = JsonNode.Parse(stdout)!["deployedBytecode"]!.GetValue<string>();
    }

    async Task<JsonNode?> RpcAsync(HttpClient http, string method, JsonArray parameters, CancellationToken ct)
    {
        using var response = await http.PostAsJsonAsync(RpcUrl, new JsonObject { ["jsonrpc"] = "2.0", ["id"] = 1, ["method"] = method, ["params"] = parameters }, ct);
        var body = await response.Content.ReadFromJsonAsync<JsonObject>(ct);
        Assert.Null(body!["error"]);
        return body["result"];
    }

    Web3 Funder() => new(new Account(FunderKey, 84532), RpcUrl);

    public async Task MintAsync(string to, long amount)
    {
        var receipt = await Funder().Eth.GetContractTransactionHandler<MintFunction>()
            .SendRequestAndWaitForReceiptAsync(X402Options.BaseSepoliaUsdc, new MintFunction { To = to, Value = amount });
        Assert.Equal(1, (int)receipt.Status.Value);
    }

    /// <summary>A plain USDC transfer from the funder (who mints to itself first); returns the tx hash.</summary>
    public async Task<string> TransferUsdcAsync(string to, long amount)
    {
        var funder = Funder();
        await MintAsync(funder.TransactionManager.Account.Address, amount);
        var receipt = await funder.Eth.GetContractTransactionHandler<TransferFunction>()
            .SendRequestAndWaitForReceiptAsync(X402Options.BaseSepoliaUsdc, new TransferFunction { To = to, Value = amount });
        return receipt.TransactionHash;
    }

    /// <summary>A plain native-value transfer, as the launch gate's <c>cast send --value</c> makes.</summary>
    public async Task<string> SendNativeAsync(string to, long wei)
    {
        var receipt = await Funder().Eth.GetEtherTransferService().TransferEtherAndWaitForReceiptAsync(to, Nethereum.Util.UnitConversion.Convert.FromWei(wei));
        return receipt.TransactionHash;
    }

    /// <summary>Sets an address's native balance with anvil_setBalance (gas money for a fresh wallet).</summary>
    public async Task SetEtherAsync(string address, long wei, CancellationToken ct)
    {
        using var http = new HttpClient();
        await RpcAsync(http, "anvil_setBalance", new JsonArray(address, "0x" + wei.ToString("x", System.Globalization.CultureInfo.InvariantCulture)), ct);
    }

    /// <summary>Turns anvil's automine off (transactions wait in the mempool, as on a slow chain) or back on.</summary>
    public async Task SetAutomineAsync(bool on, CancellationToken ct)
    {
        using var http = new HttpClient();
        await RpcAsync(http, "evm_setAutomine", new JsonArray(on), ct);
    }

    /// <summary>Mines one block with whatever waits in the mempool.</summary>
    public async Task MineAsync(CancellationToken ct)
    {
        using var http = new HttpClient();
        await RpcAsync(http, "evm_mine", new JsonArray(), ct);
    }

    /// <summary>Moves the chain's clock <paramref name="seconds"/> forward and mines a block at the new time.</summary>
    public async Task IncreaseTimeAsync(long seconds, CancellationToken ct)
    {
        using var http = new HttpClient();
        await RpcAsync(http, "evm_increaseTime", new JsonArray(seconds), ct);
        await RpcAsync(http, "evm_mine", new JsonArray(), ct);
    }

    /// <summary>Mines <paramref name="blocks"/> empty blocks at once (anvil_mine).</summary>
    public async Task MineAsync(int blocks, CancellationToken ct)
    {
        using var http = new HttpClient();
        await RpcAsync(http, "anvil_mine", new JsonArray("0x" + blocks.ToString("x", System.Globalization.CultureInfo.InvariantCulture)), ct);
    }

    /// <summary>Submits the payer's signed EIP-3009 <c>cancelAuthorization</c> (from the funder, as anyone may).</summary>
    public async Task CancelAuthorizationAsync(string authorizer, string nonce, string signature)
    {
        var receipt = await Funder().Eth.GetContractTransactionHandler<CancelAuthorizationFunction>().SendRequestAndWaitForReceiptAsync(X402Options.BaseSepoliaUsdc,
            new CancelAuthorizationFunction { Authorizer = authorizer, AuthorizationNonce = Convert.FromHexString(nonce[2..]), Signature = Convert.FromHexString(signature[2..]) });
        Assert.Equal(1, (int)receipt.Status.Value);
    }

    public async Task<long> BalanceAsync(string address) =>
        (long)await new Web3(RpcUrl).Eth.GetContractQueryHandler<BalanceOfFunction>()
            .QueryAsync<BigInteger>(X402Options.BaseSepoliaUsdc, new BalanceOfFunction { Account = address });

    public async Task<bool> AuthorizationUsedAsync(string from, string nonce) =>
        await new Web3(RpcUrl).Eth.GetContractQueryHandler<AuthorizationStateFunction>()
            .QueryAsync<bool>(X402Options.BaseSepoliaUsdc, new AuthorizationStateFunction { Authorizer = from, AuthorizationNonce = Convert.FromHexString(nonce[2..]) });

    public async Task<HexBigInteger> ReceiptStatusAsync(string tx) =>
        (await new Web3(RpcUrl).Eth.Transactions.GetTransactionReceipt.SendRequestAsync(tx)).Status;

    public ValueTask DisposeAsync()
    {
        NodeTool.Kill(_anvil);
        return ValueTask.CompletedTask;
    }
}

/// <summary>Runs the test-only Node scripts of tests/x402-chain; processes are kept by handle and killed by PID.</summary>
public static class NodeTool
{
    public static async Task<(int Code, string Stdout, string Stderr)> RunAsync(string dir, string[] args, IDictionary<string, string> env, CancellationToken ct)
    {
        var info = new ProcessStartInfo("node", args) { WorkingDirectory = dir, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var (k, v) in env)
        {
            info.Environment[k] = v;
        }

        using var process = Process.Start(info) ?? throw new InvalidOperationException("node did not start");
        try
        {
            var stdout = process.StandardOutput.ReadToEndAsync(ct);
            var stderr = process.StandardError.ReadToEndAsync(ct);
            await process.WaitForExitAsync(ct).WaitAsync(TimeSpan.FromSeconds(120), ct);
            return (process.ExitCode, await stdout, await stderr);
        }
        finally
        {
            Kill(process);
        }
    }

    /// <summary>Starts a long-running script and waits for a stdout line starting with <paramref name="ready"/>.</summary>
    public static async Task<Process> StartAsync(string dir, string script, IDictionary<string, string> env, string ready, CancellationToken ct)
    {
        var info = new ProcessStartInfo("node", [script]) { WorkingDirectory = dir, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var (k, v) in env)
        {
            info.Environment[k] = v;
        }

        var process = Process.Start(info) ?? throw new InvalidOperationException("node did not start");
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(60));
        while (await process.StandardOutput.ReadLineAsync(timeout.Token) is { } line)
        {
            if (line.StartsWith(ready, StringComparison.Ordinal))
            {
                return process;
            }
        }

        var err = await process.StandardError.ReadToEndAsync(ct);
        Kill(process);
        throw new InvalidOperationException($"{script} exited before '{ready}': {err}");
    }

    public static void Kill(Process process)
    {
        try
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
                process.WaitForExit(5000);
            }
        }
        catch (InvalidOperationException)
        {
        }

        process.Dispose();
    }
}
