using System.Globalization;
using System.Numerics;
using System.Text;
using System.Text.Json;
using Nethereum.Signer;

namespace Arrakis.Cli.Gate;

/// <summary>Pays an x402 402 on-chain and returns the transaction hash (the original used Foundry's <c>cast send</c>).</summary>
internal interface IX402Payer
{
    /// <exception cref="X402PaymentException">The transaction could not be built, signed or submitted.</exception>
    Task<string> PayAsync(string rpcUrl, string walletKey, string payTo, string amount, string? asset, CancellationToken ct);
}

internal sealed class X402PaymentException(string message) : Exception(message);

/// <summary>
/// Signs a transfer locally with the wallet key and submits it with <c>eth_sendRawTransaction</c> over JSON-RPC: a native
/// value transfer of <c>amount</c> wei (what <c>cast send --value</c> did), or an ERC-20 <c>transfer(payTo, amount)</c> when
/// the 402 names the token contract (<c>asset</c>, e.g. USDC on Base Sepolia). Like <c>cast send</c> it refuses a call
/// the node says would revert and waits for the receipt, so the hash it returns is a mined, successful transfer.
/// </summary>
internal sealed class JsonRpcX402Payer(HttpClient http, TimeSpan? receiptTimeout = null, TimeSpan? pollInterval = null) : IX402Payer
{
    static readonly TimeSpan RpcTimeout = TimeSpan.FromSeconds(15);

    /// <summary>How long to wait for the transaction to be mined (Base Sepolia blocks are 2 s).</summary>
    readonly TimeSpan _receiptTimeout = receiptTimeout ?? TimeSpan.FromSeconds(120);

    readonly TimeSpan _pollInterval = pollInterval ?? TimeSpan.FromSeconds(1);

    public async Task<string> PayAsync(string rpcUrl, string walletKey, string payTo, string amount, string? asset, CancellationToken ct)
    {
        if (!IsAddress(payTo))
        {
            throw new X402PaymentException($"payment address is not a 0x address: {payTo}");
        }

        var value = ParseQuantity(amount) ?? throw new X402PaymentException($"amount is not a non-negative integer: {amount}");
        EthECKey key;
        try
        {
            key = new EthECKey(walletKey.StartsWith("0x", StringComparison.OrdinalIgnoreCase) ? walletKey[2..] : walletKey);
        }
        catch (Exception ex) when (ex is FormatException or ArgumentException or IndexOutOfRangeException)
        {
            throw new X402PaymentException("STAGING_WALLET_KEY is not a hex private key");
        }

        var from = key.GetPublicAddress();
        var chainId = ParseQuantity(await CallAsync(rpcUrl, "eth_chainId", [], ct)) ?? throw new X402PaymentException("eth_chainId returned no number");
        var nonce = ParseQuantity(await CallAsync(rpcUrl, "eth_getTransactionCount", [from, "pending"], ct)) ?? throw new X402PaymentException("eth_getTransactionCount returned no number");
        var gasPrice = ParseQuantity(await CallAsync(rpcUrl, "eth_gasPrice", [], ct)) ?? throw new X402PaymentException("eth_gasPrice returned no number");

        string to, data;
        BigInteger txValue;
        if (asset is not null && IsAddress(asset))
        {
            to = asset;
            txValue = BigInteger.Zero;
            data = "0xa9059cbb" + payTo[2..].ToLowerInvariant().PadLeft(64, '0') + value.ToString("x", CultureInfo.InvariantCulture).TrimStart('0').PadLeft(64, '0');
        }
        else
        {
            to = payTo;
            txValue = value;
            data = "0x";
        }

        BigInteger gas = data == "0x" ? 21_000 : 100_000;
        try
        {
            var estimate = await CallAsync(rpcUrl, "eth_estimateGas", [new Dictionary<string, string> { ["from"] = from, ["to"] = to, ["value"] = Hex(txValue), ["data"] = data }], ct);
            if (ParseQuantity(estimate) is { } g)
            {
                gas = g * 12 / 10;
            }
        }
        catch (X402PaymentException ex) when (!ex.Message.Contains("revert", StringComparison.OrdinalIgnoreCase))
        {
            // Some RPCs refuse estimates for unfunded calls; the defaults cover a plain or ERC-20 transfer. A call the node
            // says reverts (e.g. the wallet holds too little of the token) is refused here, as cast send does.
        }

        var signed = new LegacyTransactionSigner().SignTransaction(key.GetPrivateKeyAsBytes(), chainId, to, txValue, nonce, gasPrice, gas, data);
        var hash = await CallAsync(rpcUrl, "eth_sendRawTransaction", ["0x" + signed], ct);
        if (!hash.StartsWith("0x", StringComparison.Ordinal))
        {
            throw new X402PaymentException($"eth_sendRawTransaction returned '{hash}'");
        }

        await WaitMinedAsync(rpcUrl, hash, ct);
        return hash;
    }

    /// <summary>Polls <c>eth_getTransactionReceipt</c> until the transaction is mined; a reverted one is a failed payment.</summary>
    async Task WaitMinedAsync(string rpcUrl, string hash, CancellationToken ct)
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            using var receipt = await CallJsonAsync(rpcUrl, "eth_getTransactionReceipt", [hash], ct);
            var result = receipt.RootElement.GetProperty("result");
            if (result.ValueKind == JsonValueKind.Object)
            {
                var status = result.TryGetProperty("status", out var s) && s.ValueKind == JsonValueKind.String ? ParseQuantity(s.GetString()) : null;
                if (status != BigInteger.One)
                {
                    throw new X402PaymentException($"transaction {hash} reverted (status {(status is { } v ? v.ToString(CultureInfo.InvariantCulture) : "missing")})");
                }

                return;
            }

            if (watch.Elapsed >= _receiptTimeout)
            {
                throw new X402PaymentException($"transaction {hash} not mined within {_receiptTimeout.TotalSeconds:0} s");
            }

            await Task.Delay(_pollInterval, ct);
        }
    }

    async Task<string> CallAsync(string rpcUrl, string method, object[] parameters, CancellationToken ct)
    {
        using var doc = await CallJsonAsync(rpcUrl, method, parameters, ct);
        return doc.RootElement.GetProperty("result") is { ValueKind: JsonValueKind.String } result
            ? result.GetString()!
            : throw new X402PaymentException($"{method}: no result");
    }

    /// <summary>One JSON-RPC call; the document has a <c>result</c> property (possibly null) or this throws.</summary>
    async Task<JsonDocument> CallJsonAsync(string rpcUrl, string method, object[] parameters, CancellationToken ct)
    {
        if (!Uri.TryCreate(rpcUrl, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
        {
            throw new X402PaymentException($"{method}: SEPOLIA_RPC_URL is not an http(s) URL: {rpcUrl}");
        }

        var body = JsonSerializer.Serialize(new { jsonrpc = "2.0", id = 1, method, @params = parameters });
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(RpcTimeout);
        try
        {
            using var response = await http.PostAsync(uri, new StringContent(body, Encoding.UTF8, "application/json"), limit.Token);
            var text = await response.Content.ReadAsStringAsync(limit.Token);
            var doc = JsonDocument.Parse(text);
            if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("error", out var error) && error.ValueKind != JsonValueKind.Null)
            {
                var message = error.ValueKind == JsonValueKind.Object && error.TryGetProperty("message", out var m) ? m.GetString() : error.GetRawText();
                doc.Dispose();
                throw new X402PaymentException($"{method}: {message}");
            }

            if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("result", out _))
            {
                doc.Dispose();
                throw new X402PaymentException($"{method}: no result (HTTP {(int)response.StatusCode})");
            }

            return doc;
        }
        catch (Exception ex) when (ex is HttpRequestException or JsonException or OperationCanceledException && !ct.IsCancellationRequested)
        {
            throw new X402PaymentException($"{method}: {ex.Message}");
        }
    }

    internal static BigInteger? ParseQuantity(string? text)
    {
        if (string.IsNullOrWhiteSpace(text))
        {
            return null;
        }

        text = text.Trim();
        if (text.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
        {
            return BigInteger.TryParse("0" + text[2..], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var hex) ? hex : null;
        }

        return BigInteger.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var dec) ? dec : null;
    }

    static string Hex(BigInteger value) => "0x" + (value.IsZero ? "0" : value.ToString("x", CultureInfo.InvariantCulture).TrimStart('0'));

    static bool IsAddress(string text) => text.Length == 42 && text.StartsWith("0x", StringComparison.OrdinalIgnoreCase) && text[2..].All(char.IsAsciiHexDigit);
}
