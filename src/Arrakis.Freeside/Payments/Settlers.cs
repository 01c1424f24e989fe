using System.Collections.Concurrent;
using System.Data.Common;
using System.Net.Http.Json;
using System.Numerics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Arrakis.Shared.Storage;
using Dapper;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Nethereum.ABI.FunctionEncoding.Attributes;
using Nethereum.Contracts;
using Nethereum.Hex.HexConvertors.Extensions;
using Nethereum.JsonRpc.Client;
using Nethereum.RPC.Eth.DTOs;
using Nethereum.Util;
using Nethereum.Web3;
using Nethereum.Web3.Accounts;

namespace Arrakis.Freeside.Payments;

/// <summary>
/// What a settler needs: the v2-normalized payload and requirement, plus the authorization itself. <see cref="Resumed"/>:
/// recovery settles a payment an earlier attempt left <c>settling</c>, and that attempt may have moved the money.
/// </summary>
public sealed record SettlementRequest(string PaymentId, JsonObject PaymentPayload, JsonObject Requirement, Eip3009Authorization Authorization, string Signature, string? KnownTxHash, string? RawTx,
    bool Resumed = false);

/// <summary>A settlement attempt's outcome. <see cref="Transaction"/> is the on-chain tx hash on success.</summary>
public sealed record SettlementOutcome(bool Success, string? Transaction, string? ErrorReason)
{
    /// <summary>The payment did not take the transaction (<see cref="RecordOutcome"/> other than Recorded): never a success.</summary>
    public static SettlementOutcome NotRecorded(RecordOutcome record, string transaction) =>
        new(false, transaction, record == RecordOutcome.TransactionClaimed ? X402Errors.TransactionClaimed : X402Errors.PaymentNotSettling);
}

/// <summary>Turns a verified EIP-3009 authorization into an on-chain transfer.</summary>
public interface IPaymentSettler
{
    /// <summary>Checks with the chain or facilitator before the paid call runs (balance, nonce state); null when it may proceed.</summary>
    Task<PaymentRejection?> PreVerifyAsync(SettlementRequest request, CancellationToken ct);

    /// <summary>
    /// Settles. <paramref name="onSigned"/> records a tx hash (and raw tx) on the payment, before broadcast when the settler
    /// signs it itself; unless it answers <see cref="RecordOutcome.Recorded"/> the settlement is not the payment's
    /// (see <see cref="SettlementOutcome.NotRecorded"/>), and a settler that has not broadcast yet must not broadcast.
    /// </summary>
    Task<SettlementOutcome> SettleAsync(SettlementRequest request, Func<string, string?, Task<RecordOutcome>> onSigned, CancellationToken ct);
}

/// <summary>Settler (a): an x402 facilitator over HTTP, spec v2 §7 (<c>/verify</c>, <c>/settle</c>, <c>/supported</c>).</summary>
public sealed class FacilitatorSettler(IHttpClientFactory clients, IOptions<X402Options> options, ILogger<FacilitatorSettler> logger) : IPaymentSettler
{
    public const string ClientName = "x402-facilitator";

    public async Task<PaymentRejection?> PreVerifyAsync(SettlementRequest request, CancellationToken ct)
    {
        var (ok, body, _) = await PostAsync("verify", request, ct);
        if (!ok || body is null)
        {
            return new PaymentRejection(502, X402Errors.UnexpectedVerifyError, "The facilitator did not answer /verify.");
        }

        return Flag(body["isValid"]) == true
            ? null
            : new PaymentRejection(402, Text(body["invalidReason"]) ?? X402Errors.UnexpectedVerifyError, "The facilitator rejected the payment.");
    }

    public async Task<SettlementOutcome> SettleAsync(SettlementRequest request, Func<string, string?, Task<RecordOutcome>> onSigned, CancellationToken ct)
    {
        var (ok, body, unknown) = await PostAsync("settle", request, ct);
        var tx = Text(body?["transaction"]);
        var success = Flag(body?["success"]);
        // An answer whose success is not a boolean, or a success without its transaction, says nothing definite.
        unknown |= ok && (success is null || (success == true && string.IsNullOrEmpty(tx)));
        if (ok && success == true && !string.IsNullOrEmpty(tx))
        {
            var record = await onSigned(tx, null);
            return record == RecordOutcome.Recorded ? new SettlementOutcome(true, tx, null) : SettlementOutcome.NotRecorded(record, tx);
        }

        // Refused or unanswered: if this authorization already moved the funds (a settle that landed before a crash or a
        // timeout), that transaction is the settlement.
        var o = options.Value;
        var web3 = new Web3(o.RpcUrl);
        var (fate, landed) = await AuthorizationLookup.FindAsync(web3, o, request, logger, ct);
        if (fate == AuthorizationFate.Used)
        {
            return await AuthorizationLookup.SettleWithAsync(request, landed!, onSigned, logger);
        }

        if (fate == AuthorizationFate.Canceled)
        {
            // The payer cancelled the authorization: no transfer can ever use it, whatever the facilitator did.
            return new SettlementOutcome(false, null, (ok ? Text(body?["errorReason"]) : null) ?? X402Errors.NonceUsed);
        }

        if (unknown || fate == AuthorizationFate.Unlocated || (request.Resumed && fate == AuthorizationFate.Unknown)
            || (request.Resumed && fate == AuthorizationFate.Unused && !await AuthorizationLookup.ExpiredAsync(web3, o, request, logger, ct)))
        {
            // No answer (a timeout on a slow chain, a dropped connection, a 5xx): the facilitator may have broadcast a
            // transaction that is not mined yet. Failing now would be final while the money may still move, so the payment
            // stays settling and recovery asks the facilitator and the chain again. The same when recovery resumes a
            // payment an earlier attempt left unknown and the chain cannot be asked, or says the authorization is unused
            // while it can still be used: this attempt's refusal (or a facilitator that is down) says nothing about what
            // the earlier one broadcast, which may still be mined; only once the authorization has expired unused can no
            // transfer use it. And when the authorization is used but its transaction is older than the lookback window:
            // it may be this payment's, so it is never failed.
            return new SettlementOutcome(false, null, X402Errors.SettlementPending);
        }

        return new SettlementOutcome(false, null, (ok ? Text(body?["errorReason"]) : null) ?? X402Errors.UnexpectedSettleError);
    }

    /// <summary>A boolean field of a facilitator answer, or null when it is missing or of another type (never an exception).</summary>
    static bool? Flag(JsonNode? node) => node is JsonValue v && v.TryGetValue<bool>(out var b) ? b : null;

    /// <summary>A string field of a facilitator answer, or null when it is missing or of another type.</summary>
    static string? Text(JsonNode? node) => node is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;

    /// <summary><c>GET /supported</c>: the facilitator's kinds, for diagnostics.</summary>
    public async Task<JsonNode?> SupportedAsync(CancellationToken ct) =>
        await clients.CreateClient(ClientName).GetFromJsonAsync<JsonNode>("supported", ct);

    /// <summary>
    /// Posts to the facilitator. <c>Unknown</c> is true when the request may have reached it but no definitive answer came
    /// back (a timeout, a dropped connection, a 5xx, an unreadable body); a connection that was never made delivered nothing.
    /// </summary>
    async Task<(bool Ok, JsonObject? Body, bool Unknown)> PostAsync(string path, SettlementRequest request, CancellationToken ct)
    {
        var body = new JsonObject
        {
            ["x402Version"] = 2,
            ["paymentPayload"] = request.PaymentPayload.DeepClone(),
            ["paymentRequirements"] = request.Requirement.DeepClone(),
        };
        try
        {
            using var response = await clients.CreateClient(ClientName).PostAsync(path, JsonContent.Create(body), ct);
            var node = await response.Content.ReadFromJsonAsync<JsonNode>(ct);
            return (response.IsSuccessStatusCode, node as JsonObject, (int)response.StatusCode >= 500 || node is not JsonObject);
        }
        catch (Exception ex) when (ex is HttpRequestException or JsonException or TaskCanceledException or NotSupportedException && !ct.IsCancellationRequested)
        {
            logger.LogWarning(ex, "x402 facilitator /{Path} failed", path);
            return (false, null, ex is not HttpRequestException { HttpRequestError: HttpRequestError.ConnectionError });
        }
    }
}

[Function("transferWithAuthorization")]
public sealed class TransferWithAuthorizationFunction : FunctionMessage
{
    [Parameter("address", "from", 1)] public string From { get; set; } = "";
    [Parameter("address", "to", 2)] public string To { get; set; } = "";
    [Parameter("uint256", "value", 3)] public BigInteger Value { get; set; }
    [Parameter("uint256", "validAfter", 4)] public BigInteger ValidAfter { get; set; }
    [Parameter("uint256", "validBefore", 5)] public BigInteger ValidBefore { get; set; }
    [Parameter("bytes32", "nonce", 6)] public byte[] AuthorizationNonce { get; set; } = [];
    [Parameter("bytes", "signature", 7)] public byte[] Signature { get; set; } = [];
}

[Function("balanceOf", "uint256")]
public sealed class BalanceOfFunction : FunctionMessage
{
    [Parameter("address", "account", 1)] public string Account { get; set; } = "";
}

[Event("AuthorizationUsed")]
public sealed class AuthorizationUsedEvent : IEventDTO
{
    [Parameter("address", "authorizer", 1, true)] public string Authorizer { get; set; } = "";
    [Parameter("bytes32", "nonce", 2, true)] public byte[] AuthorizationNonce { get; set; } = [];
}

[Event("AuthorizationCanceled")]
public sealed class AuthorizationCanceledEvent : IEventDTO
{
    [Parameter("address", "authorizer", 1, true)] public string Authorizer { get; set; } = "";
    [Parameter("bytes32", "nonce", 2, true)] public byte[] AuthorizationNonce { get; set; } = [];
}

[Function("authorizationState", "bool")]
public sealed class AuthorizationStateFunction : FunctionMessage
{
    [Parameter("address", "authorizer", 1)] public string Authorizer { get; set; } = "";
    [Parameter("bytes32", "nonce", 2)] public byte[] AuthorizationNonce { get; set; } = [];
}

/// <summary>What the chain says about a payment's EIP-3009 authorization (see <see cref="AuthorizationLookup"/>).</summary>
internal enum AuthorizationFate
{
    /// <summary>The chain could not be asked: nothing is known.</summary>
    Unknown,

    /// <summary>Neither used nor cancelled: a transfer may still use it.</summary>
    Unused,

    /// <summary>A transfer used it; its <c>AuthorizationUsed</c> event names the transaction.</summary>
    Used,

    /// <summary>The payer cancelled it (<c>cancelAuthorization</c>, event <c>AuthorizationCanceled</c>): no transfer can ever use it.</summary>
    Canceled,

    /// <summary>Used or cancelled, but neither event is within <see cref="X402Options.SettlementLookbackBlocks"/>: which one is unknown.</summary>
    Unlocated,
}

/// <summary>Asks the chain (<see cref="X402Options.RpcUrl"/>) what became of a payment's authorization, for both settlers.</summary>
internal static class AuthorizationLookup
{
    /// <summary>
    /// The authorization's fate, with the transaction of its <c>AuthorizationUsed</c> (or <c>AuthorizationCanceled</c>)
    /// event within the last <see cref="X402Options.SettlementLookbackBlocks"/> blocks. A used authorization whose event
    /// is older than that is <see cref="AuthorizationFate.Unlocated"/> and logged for an operator: it may be this payment's.
    /// </summary>
    public static async Task<(AuthorizationFate Fate, string? Transaction)> FindAsync(Web3 web3, X402Options o, SettlementRequest request, ILogger logger, CancellationToken ct)
    {
        try
        {
            var a = TransferWithAuthorization.From3009(request.Authorization);
            var used = await web3.Eth.GetContractQueryHandler<AuthorizationStateFunction>()
                .QueryAsync<bool>(o.Asset, new AuthorizationStateFunction { Authorizer = a.From, AuthorizationNonce = a.Nonce });
            if (!used)
            {
                return (AuthorizationFate.Unused, null);
            }

            var latest = (await web3.Eth.Blocks.GetBlockNumber.SendRequestAsync()).Value;
            var from = new BlockParameter(new Nethereum.Hex.HexTypes.HexBigInteger(BigInteger.Max(0, latest - o.SettlementLookbackBlocks)));
            if (await FirstAsync<AuthorizationUsedEvent>(web3, o.Asset, a, from) is { } transfer)
            {
                return (AuthorizationFate.Used, transfer);
            }

            if (await FirstAsync<AuthorizationCanceledEvent>(web3, o.Asset, a, from) is { } cancel)
            {
                return (AuthorizationFate.Canceled, cancel);
            }

            ct.ThrowIfCancellationRequested();
            PaymentLog.SettlementUnlocated(logger, request.PaymentId, request.Authorization.From, request.Authorization.Nonce, o.SettlementLookbackBlocks);
            return (AuthorizationFate.Unlocated, null);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            logger.LogWarning(ex, "x402 could not ask the chain whether the authorization of payment {PaymentId} was used", request.PaymentId);
            return (AuthorizationFate.Unknown, null);
        }
    }

    /// <summary>
    /// True when no transfer can ever use the payment's authorization: the chain's latest block is at or past its
    /// <c>validBefore</c> (every later block is too, and the asset refuses the transfer) and it was still unused after that
    /// block. False while it may yet be used, or when the chain cannot be asked.
    /// </summary>
    public static async Task<bool> ExpiredAsync(Web3 web3, X402Options o, SettlementRequest request, ILogger logger, CancellationToken ct)
    {
        try
        {
            var a = TransferWithAuthorization.From3009(request.Authorization);
            var latest = await web3.Eth.Blocks.GetBlockWithTransactionsHashesByNumber.SendRequestAsync(BlockParameter.CreateLatest());
            if (latest.Timestamp.Value < a.ValidBefore)
            {
                return false;
            }

            // Read after that block: unused now means unused for good.
            ct.ThrowIfCancellationRequested();
            return !await web3.Eth.GetContractQueryHandler<AuthorizationStateFunction>()
                .QueryAsync<bool>(o.Asset, new AuthorizationStateFunction { Authorizer = a.From, AuthorizationNonce = a.Nonce });
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            logger.LogWarning(ex, "x402 could not ask the chain whether the authorization of payment {PaymentId} expired", request.PaymentId);
            return false;
        }
    }

    /// <summary>Settles with the transaction that used the payment's authorization, if the payment takes it (both settlers).</summary>
    public static async Task<SettlementOutcome> SettleWithAsync(SettlementRequest request, string landed, Func<string, string?, Task<RecordOutcome>> onSigned, ILogger logger)
    {
        logger.LogInformation("x402 payment {PaymentId} was settled on chain in {Transaction}", request.PaymentId, landed);
        var record = await onSigned(landed, null);
        return record == RecordOutcome.Recorded ? new SettlementOutcome(true, landed, null) : SettlementOutcome.NotRecorded(record, landed);
    }

    static async Task<string?> FirstAsync<TEvent>(Web3 web3, string asset, TransferWithAuthorization a, BlockParameter from) where TEvent : IEventDTO, new()
    {
        var events = web3.Eth.GetEvent<TEvent>(asset);
        var logs = await events.GetAllChangesAsync(events.CreateFilterInput(a.From, a.Nonce, from, BlockParameter.CreateLatest()));
        return logs.Select(l => l.Log.TransactionHash).FirstOrDefault(h => !string.IsNullOrEmpty(h));
    }
}

/// <summary>
/// Settler (b): submits <c>transferWithAuthorization(from,to,value,validAfter,validBefore,nonce,bytes signature)</c>
/// to the asset with our relayer key over JSON-RPC. Every replica shares the relayer account, so submissions are
/// serialized across them (see <see cref="LockRelayerAsync"/>) and each takes the account's <c>pending</c> transaction
/// count as its nonce inside that lock: two settlements never get the same relayer nonce.
/// </summary>
public sealed class DirectChainSettler(Database db, IOptions<X402Options> options, ILogger<DirectChainSettler> logger) : IPaymentSettler
{
    /// <summary>One gate per relayer account and chain in this process (a process may host more than one settler).</summary>
    static readonly ConcurrentDictionary<string, SemaphoreSlim> Gates = new(StringComparer.Ordinal);

    /// <summary>How many times a new settlement is signed again with a fresh nonce when the node refuses its nonce.</summary>
    const int NonceAttempts = 3;

    Web3 Connect()
    {
        var o = options.Value;
        return new Web3(new Account(o.RelayerKey!, o.ChainId), o.RpcUrl);
    }

    public async Task<PaymentRejection?> PreVerifyAsync(SettlementRequest request, CancellationToken ct)
    {
        var o = options.Value;
        try
        {
            var web3 = Connect();
            var a = TransferWithAuthorization.From3009(request.Authorization);
            var used = await web3.Eth.GetContractQueryHandler<AuthorizationStateFunction>()
                .QueryAsync<bool>(o.Asset, new AuthorizationStateFunction { Authorizer = a.From, AuthorizationNonce = a.Nonce });
            if (used)
            {
                return new PaymentRejection(409, X402Errors.NonceUsed, "This authorization nonce is already used on chain.");
            }

            var balance = await web3.Eth.GetContractQueryHandler<BalanceOfFunction>()
                .QueryAsync<BigInteger>(o.Asset, new BalanceOfFunction { Account = a.From });
            return balance < a.Value ? new PaymentRejection(402, X402Errors.InsufficientFunds, "The payer's balance is below the authorized value.") : null;
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            logger.LogWarning(ex, "x402 direct pre-verify failed");
            return new PaymentRejection(502, X402Errors.UnexpectedVerifyError, "The chain could not be queried.");
        }
    }

    public async Task<SettlementOutcome> SettleAsync(SettlementRequest request, Func<string, string?, Task<RecordOutcome>> onSigned, CancellationToken ct)
    {
        var o = options.Value;
        var web3 = Connect();
        // The recorded transaction once it may have reached the node, and whether the node took it. A recorded transaction
        // that recovery rebroadcasts may have reached it already (the earlier attempt broadcast it): whatever fails before
        // the node answers this time (the relayer lock's database call, the RPC) says nothing about it, so the payment
        // stays settling.
        // The same for a recorded transaction this settler did not sign (no raw transaction: the one found on chain using the
        // authorization, recorded before a crash kept the payment from being marked settled).
        string? sending = request.RawTx is { } rebroadcast ? "0x" + Sha3Keccack.Current.CalculateHashFromHex(rebroadcast) : request.KnownTxHash;
        var sent = false;
        // The node answered the send itself with an error: it refused the transaction (any other call's error says nothing).
        var refused = false;
        try
        {
            if (request.RawTx is null && request.KnownTxHash is { } known)
            {
                // The chain says what became of the authorization; while a transaction may have used it, nothing is signed
                // (a new transfer of a used authorization only reverts, at the relayer's cost).
                var (fate, landed) = await AuthorizationLookup.FindAsync(web3, o, request, logger, ct);
                switch (fate)
                {
                    case AuthorizationFate.Used:
                        return await AuthorizationLookup.SettleWithAsync(request, landed!, onSigned, logger);
                    case AuthorizationFate.Canceled:
                        return new SettlementOutcome(false, null, X402Errors.NonceUsed);
                    case AuthorizationFate.Unknown or AuthorizationFate.Unlocated:
                        return new SettlementOutcome(false, known, X402Errors.SettlementPending);
                }

                // Unused: the recorded transaction did not use it (it is not mined, or was reorganized out): signed below.
            }

            string txHash;
            var relayer = web3.TransactionManager.Account.Address;
            var key = $"x402-relayer:{o.ChainId}:{relayer.ToLowerInvariant()}";
            var gate = Gates.GetOrAdd(key, _ => new SemaphoreSlim(1, 1));
            await gate.WaitAsync(ct);
            try
            {
                await using var relayerLock = await LockRelayerAsync(key, ct);
                // Recovery rebroadcasts the recorded transaction; null once it signs a new one.
                var recorded = request.RawTx;
                for (var attempt = 1; ; attempt++)
                {
                    var raw = recorded;
                    if (raw is null)
                    {
                        var a = TransferWithAuthorization.From3009(request.Authorization);
                        var fn = new TransferWithAuthorizationFunction
                        {
                            From = a.From, To = a.To, Value = a.Value, ValidAfter = a.ValidAfter, ValidBefore = a.ValidBefore, AuthorizationNonce = a.Nonce,
                            Signature = request.Signature.HexToByteArray(),
                            Gas = 200_000,
                            // Read under the lock, after every earlier settlement (of any replica) reached the node.
                            Nonce = (await web3.Eth.Transactions.GetTransactionCount.SendRequestAsync(relayer, BlockParameter.CreatePending())).Value,
                        };
                        raw = await web3.Eth.GetContractTransactionHandler<TransferWithAuthorizationFunction>().SignTransactionAsync(o.Asset, fn);
                    }

                    txHash = "0x" + Sha3Keccack.Current.CalculateHashFromHex(raw);
                    if (await onSigned(txHash, raw) is not RecordOutcome.Recorded and var record)
                    {
                        // Not this payment's to settle (or the hash is another payment's): the transaction is never broadcast.
                        return SettlementOutcome.NotRecorded(record, txHash);
                    }

                    sending = txHash;
                    try
                    {
                        await web3.Eth.Transactions.SendRawTransaction.SendRequestAsync(raw.EnsureHexPrefix());
                        break;
                    }
                    catch (RpcResponseException ex) when (recorded is null && attempt < NonceAttempts && IsNonceTaken(ex))
                    {
                        // The node refused a new settlement because its nonce is already used or pending (a sender that does
                        // not take the lock: an older replica during a rolling deploy, another tool with the same key, or a
                        // node behind the one that took the last send). The refused transaction can never be mined, so
                        // the payment is signed again with the node's next nonce; the new hash replaces the recorded one.
                        logger.LogWarning("x402 direct settlement {Transaction} of payment {PaymentId} was refused ({Reason}); signing again with a fresh relayer nonce",
                            txHash, request.PaymentId, ex.Message);
                        sending = null;
                        await Task.Delay(200 * attempt, ct);
                    }
                    catch (Exception ex) when (recorded is not null && ex is not OperationCanceledException)
                    {
                        // Recovery rebroadcast of a transaction the node already has ("already known") or already mined (refused
                        // as "nonce too low"): its receipt below is the answer.
                        if (ex.Message.Contains("known", StringComparison.OrdinalIgnoreCase)
                            || await web3.Eth.Transactions.GetTransactionReceipt.SendRequestAsync(txHash) is not null)
                        {
                            break;
                        }

                        if (ex.Message.Contains("replacement transaction underpriced", StringComparison.OrdinalIgnoreCase))
                        {
                            // Another transaction holds the recorded one's relayer nonce in the mempool (a replacement sent outside
                            // freeside may carry this very authorization): nothing is known until it is mined, so never failed.
                            return new SettlementOutcome(false, txHash, X402Errors.SettlementPending);
                        }

                        var nonceTaken = ex.Message.Contains("nonce too low", StringComparison.OrdinalIgnoreCase);
                        if (!nonceTaken && ex is not RpcResponseException)
                        {
                            throw; // the node did not answer: nothing is known, the payment stays settling
                        }

                        // "nonce too low" without a receipt: another transaction took the recorded one's relayer nonce (it was
                        // dropped and the nonce reused, or a sender outside freeside replaced it), so it can never be mined.
                        // Any other refusal of the rebroadcast (a provider's rate limit, a relayer short of gas money) is this
                        // node's answer to this send only: the earlier attempt may have broadcast the transaction, and it may
                        // still be mined. Either way the authorization says what happened to the payment.
                        var (fate, landed) = await AuthorizationLookup.FindAsync(web3, o, request, logger, ct);
                        switch (fate)
                        {
                            case AuthorizationFate.Unused when nonceTaken:
                                // Nothing moved: signed again with a fresh relayer nonce, under this lock; the new hash replaces the recorded one.
                                logger.LogWarning("x402 recorded settlement {Transaction} of payment {PaymentId} can never be mined (its relayer nonce went to another transaction) and the authorization is unused; signing it again with a fresh relayer nonce",
                                    txHash, request.PaymentId);
                                recorded = null;
                                sending = null;
                                continue;
                            case AuthorizationFate.Used:
                                // Another transaction (a replacement sent outside freeside) moved the money: it is the settlement.
                                return await AuthorizationLookup.SettleWithAsync(request, landed!, onSigned, logger);
                            case AuthorizationFate.Canceled:
                                return new SettlementOutcome(false, null, X402Errors.NonceUsed);
                            default:
                                // The recorded transaction may still be mined (the rebroadcast was refused for another reason), the
                                // chain cannot be asked, or the transaction that used the authorization is out of sight: never failed.
                                return new SettlementOutcome(false, txHash, X402Errors.SettlementPending);
                        }
                    }
                    catch (RpcResponseException)
                    {
                        refused = true; // a new settlement the node refused, for good
                        throw;
                    }
                }
            }
            finally
            {
                gate.Release();
            }

            sent = true;
            var deadline = DateTime.UtcNow.AddSeconds(Math.Max(30, o.MaxTimeoutSeconds));
            while (DateTime.UtcNow < deadline)
            {
                var receipt = await web3.Eth.Transactions.GetTransactionReceipt.SendRequestAsync(txHash);
                if (receipt is not null)
                {
                    if (receipt.Status?.Value == 1)
                    {
                        return new SettlementOutcome(true, txHash, null);
                    }

                    // Reverted. If another transaction used the authorization first (the one this replaced, or one the payer
                    // or a sender outside freeside submitted), that transfer paid this payment.
                    var (fate, landed) = await AuthorizationLookup.FindAsync(web3, o, request, logger, ct);
                    return fate switch
                    {
                        AuthorizationFate.Used => await AuthorizationLookup.SettleWithAsync(request, landed!, onSigned, logger),
                        AuthorizationFate.Unknown or AuthorizationFate.Unlocated => new SettlementOutcome(false, txHash, X402Errors.SettlementPending),
                        _ => new SettlementOutcome(false, null, X402Errors.InvalidTransactionState),
                    };
                }

                await Task.Delay(200, ct);
            }

            return new SettlementOutcome(false, txHash, X402Errors.SettlementPending);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            logger.LogWarning(ex, "x402 direct settlement failed");
            // Once the node may have the transaction (it took it, or the connection failed mid-send), only its receipt can
            // say it failed: the payment stays settling, and recovery rebroadcasts it and reads the receipt. A node that
            // answered a new settlement's send with an error refused it, and nothing will be mined; an error answer to
            // another call (a receipt read refused by a provider's rate limit) says nothing about the transaction.
            return sending is not null && (sent || !refused)
                ? new SettlementOutcome(false, sending, X402Errors.SettlementPending)
                : new SettlementOutcome(false, null, X402Errors.UnexpectedSettleError);
        }
    }

    /// <summary>
    /// A node's refusal of a new transaction because its nonce is taken: by a mined transaction (<c>nonce too low</c>) or
    /// by another pending one (<c>replacement transaction underpriced</c>). Not <c>already known</c>: that node holds this
    /// very transaction, which may still be mined.
    /// </summary>
    static bool IsNonceTaken(RpcResponseException ex) =>
        ex.Message.Contains("nonce too low", StringComparison.OrdinalIgnoreCase)
        || ex.Message.Contains("replacement transaction underpriced", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// Serializes relayer submissions across replicas: on PostgreSQL a transaction-scoped advisory lock on the relayer
    /// account, held (on a connection of its own) from the nonce read until the node took the transaction, and released
    /// when the connection's transaction ends, even if this process dies. SQLite runs in one process, where the gate suffices.
    /// </summary>
    async Task<IAsyncDisposable?> LockRelayerAsync(string key, CancellationToken ct)
    {
        if (!db.IsPostgres)
        {
            return null;
        }

        var connection = await db.OpenAsync(ct);
        try
        {
            var tx = await connection.BeginTransactionAsync(ct);
            await connection.ExecuteAsync(new CommandDefinition("SELECT pg_advisory_xact_lock(hashtext(@key))", new { key }, tx, cancellationToken: ct));
            return new RelayerLock(connection, tx);
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    sealed class RelayerLock(DbConnection connection, DbTransaction tx) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            try
            {
                await tx.DisposeAsync(); // rolls back: the lock goes with the transaction
            }
            catch (DbException)
            {
                // The connection broke and its session (with the lock) ended; the settlement's outcome stands.
            }
            finally
            {
                await connection.DisposeAsync();
            }
        }
    }
}
