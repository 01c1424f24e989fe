using System.Globalization;
using System.Numerics;
using System.Text.RegularExpressions;
using Arrakis.Shared.Http;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Microsoft.IdentityModel.JsonWebTokens;
using Nethereum.Hex.HexTypes;
using Nethereum.Util;
using Nethereum.Web3;

namespace Arrakis.Freeside.Payments;

/// <summary>
/// The legacy <c>X-Payment-Proof: &lt;tx hash&gt;</c> path: reads the transaction and its receipt over JSON-RPC and credits
/// only a plain USDC <c>transfer(payTo, amount)</c> sent by the payer itself (or, only when <c>X402:NativeMicroPerWei</c>
/// &gt; 0, a plain native-value transfer to payTo, which is what the launch gate's <c>cast send --value</c> makes), then
/// issues a credit note for the whole payment. An EIP-3009 <c>transferWithAuthorization</c> is refused (that money is
/// counted on the x402 path), and so is anything else that moves USDC to payTo (<c>transferFrom</c> by a third party, a
/// contract call). The same transaction twice gives one note (unique tx hash).
/// </summary>
public sealed partial class LegacyProof(PaymentStore store, PaymentFlow flow, IPayerCommunityResolver communities, PaymentMetrics metrics,
    IOptions<X402Options> options, ILogger<LegacyProof> logger)
{
    static readonly string TransferTopic = "0x" + Sha3Keccack.Current.CalculateHash("Transfer(address,address,uint256)");
    static readonly string AuthorizationUsedTopic = "0x" + Sha3Keccack.Current.CalculateHash("AuthorizationUsed(address,bytes32)");
    static readonly string TransferSelector = Selector("transfer(address,uint256)");

    /// <summary>EIP-3009's state-changing calls (both signature encodings): settlements of signed authorizations.</summary>
    static readonly string[] AuthorizationSelectors =
    [
        Selector("transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"),
        Selector("transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"),
        Selector("receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"),
        Selector("receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"),
    ];

    static string Selector(string signature) => "0x" + Sha3Keccack.Current.CalculateHash(signature)[..8];

    [GeneratedRegex(@"^0x[0-9a-fA-F]{64}\z")]
    private static partial Regex TxHash();

    /// <summary>What a proof transaction pays: the payer and the amount, or why it does not count.</summary>
    public sealed record ProofCheck(string? Payer, BigInteger Paid, string? Code, string? Detail);

    /// <summary>
    /// Decides whether a mined, successful transaction is a payment this path credits: a plain ERC-20 <c>transfer</c> of
    /// the asset, called by the payer, to payTo, whose receipt shows that very Transfer; or an enabled native transfer.
    /// </summary>
    public static ProofCheck Check(X402Options o, string? from, string? to, BigInteger value, string? input, IEnumerable<(string? Address, string[] Topics, string? Data)> logs)
    {
        static ProofCheck Refuse(string code, string detail) => new(null, 0, code, detail);
        static string Word(string address) => "0x" + address[2..].ToLowerInvariant().PadLeft(64, '0');
        input = (input ?? "0x").ToLowerInvariant();
        var assetLogs = logs.Where(l => l.Address is not null && AuthorizationVerifier.Same(l.Address, o.Asset)).ToList();
        if (assetLogs.Any(l => l.Topics.Length > 0 && l.Topics[0] == AuthorizationUsedTopic)
            || (to is not null && AuthorizationVerifier.Same(to, o.Asset) && input.Length >= 10 && AuthorizationSelectors.Contains(input[..10])))
        {
            return Refuse(X402Errors.ProofIsSettlement,
                "The transaction settles an EIP-3009 authorization (transferWithAuthorization): that payment is counted on the x402 path, not as a proof.");
        }

        if (from is null || to is null)
        {
            return Refuse(X402Errors.ProofInvalid, "The transaction has no sender or recipient.");
        }

        if (AuthorizationVerifier.Same(to, o.Asset))
        {
            // transfer(address to, uint256 value): 4 + 32 + 32 bytes, the address word zero-padded, no trailing data.
            if (input.Length != 2 + 8 + 128 || input[..10] != TransferSelector || value != 0 || input[10..34].Trim('0').Length != 0)
            {
                return Refuse(X402Errors.ProofInvalid,
                    $"The proof must be a plain {o.AssetName} transfer(payTo, amount) sent by the payer; transferFrom and other contract calls are not credited.");
            }

            var recipient = "0x" + input[34..74];
            var paid = BigInteger.Parse("0" + input[74..], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture);
            if (!AuthorizationVerifier.Same(recipient, o.PayTo))
            {
                return Refuse(X402Errors.RecipientMismatch, "The transfer does not go to the payment address.");
            }

            var logged = assetLogs.Any(l => l.Topics.Length == 3 && l.Topics[0] == TransferTopic && l.Topics[1] == Word(from) && l.Topics[2] == Word(o.PayTo)
                && l.Data is { Length: 66 } d && new HexBigInteger(d).Value == paid);
            return logged ? new ProofCheck(from, paid, null, null)
                : Refuse(X402Errors.ProofInvalid, "The receipt shows no matching Transfer from the payer to the payment address.");
        }

        if (o.NativeMicroPerWei > 0 && AuthorizationVerifier.Same(to, o.PayTo) && value > 0 && input == "0x")
        {
            return new ProofCheck(from, value * o.NativeMicroPerWei, null, null);
        }

        return AuthorizationVerifier.Same(to, o.PayTo)
            ? Refuse(X402Errors.RecipientMismatch, $"The transaction pays no {o.AssetName} to the payment address.")
            : Refuse(X402Errors.ProofInvalid, $"The proof must be a plain {o.AssetName} transfer(payTo, amount) sent by the payer.");
    }

    /// <summary>What the payer signs (EIP-191 <c>personal_sign</c>) to present its own transaction as a proof.</summary>
    public static string Message(string txHash) => "arrakis x402 payment proof " + txHash.Trim().ToLowerInvariant();

    /// <summary>The account that signed <see cref="Message"/> for <paramref name="txHash"/>, or null when the signature is malformed.</summary>
    public static string? Signer(string txHash, string signature)
    {
        signature = signature.Trim();
        if (!ProofSignature().IsMatch(signature))
        {
            return null;
        }

        try
        {
            return new Nethereum.Signer.EthereumMessageSigner().EncodeUTF8AndEcRecover(Message(txHash), signature);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            return null;
        }
    }

    [GeneratedRegex(@"^0x[0-9a-fA-F]{130}\z")]
    private static partial Regex ProofSignature();

    public async Task<IResult> HandleAsync(string proof, string? signature, PaymentChallenge challenge, JsonWebToken? token, CancellationToken ct)
    {
        var o = options.Value;
        proof = proof.Trim();
        if (!TxHash().IsMatch(proof))
        {
            return Problems.Create(400, X402Errors.ProofInvalid, "X-Payment-Proof must be a 0x-prefixed 32-byte transaction hash.");
        }

        var tx = proof.ToLowerInvariant();
        string? signer = null;
        if (!string.IsNullOrWhiteSpace(signature))
        {
            signer = Signer(tx, signature);
            if (signer is null)
            {
                return Reject(challenge, X402Errors.ProofNotSignedByPayer,
                    $"{X402Headers.XPaymentProofSignature} must be a 65-byte 0x-hex EIP-191 signature of '{Message(tx)}' by the payer.");
            }
        }
        else if (o.LegacyProofRequiresPayerSignature)
        {
            return Reject(challenge, X402Errors.ProofSignatureRequired,
                $"Send {X402Headers.XPaymentProofSignature}: the payer's EIP-191 (personal_sign) signature of '{Message(tx)}'. A transaction hash alone does not show who presents it.");
        }

        if (await store.FindByTxAsync(tx, ct) is { } known)
        {
            // A proof's stored answer (with its credit note) is replayed only to its payer.
            return signer is not null && known.Kind == "proof" && !AuthorizationVerifier.Same(signer, known.Payer)
                ? Reject(challenge, X402Errors.ProofNotSignedByPayer, "The signature is not the payer's: the transaction was sent by another account.")
                : Known(known);
        }

        var web3 = new Web3(o.RpcUrl);
        ProofCheck check;
        try
        {
            var receipt = await web3.Eth.Transactions.GetTransactionReceipt.SendRequestAsync(tx);
            if (receipt is null)
            {
                return Reject(challenge, X402Errors.ProofPending, "The transaction is not mined yet.");
            }

            if (receipt.Status?.Value != 1)
            {
                return Reject(challenge, X402Errors.ProofInvalid, "The transaction reverted.");
            }

            var head = await web3.Eth.Blocks.GetBlockNumber.SendRequestAsync();
            if (head.Value - receipt.BlockNumber.Value + 1 < o.Confirmations)
            {
                return Reject(challenge, X402Errors.ProofPending, $"The transaction needs {o.Confirmations} confirmations.");
            }

            var transaction = await web3.Eth.Transactions.GetTransactionByHash.SendRequestAsync(tx);
            if (transaction is null)
            {
                return Reject(challenge, X402Errors.ProofPending, "The transaction is not available yet.");
            }

            var logs = (receipt.Logs ?? []).Select(log => ((string?)log.Address,
                log.Topics?.Select(t => t?.ToString()?.ToLowerInvariant() ?? "").ToArray() ?? [], (string?)log.Data));
            check = Check(o, transaction.From, transaction.To, transaction.Value?.Value ?? 0, transaction.Input, logs);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            logger.LogWarning(ex, "x402 legacy proof lookup failed");
            return Problems.Create(502, X402Errors.UnexpectedVerifyError, "The chain could not be queried for the payment proof.");
        }

        if (check.Code is { } code)
        {
            return Reject(challenge, code, check.Detail!);
        }

        var (payer, paid) = (check.Payer!, check.Paid);
        if (signer is not null && !AuthorizationVerifier.Same(signer, payer))
        {
            return Reject(challenge, X402Errors.ProofNotSignedByPayer, "The signature is not the payer's: the transaction was sent by another account.");
        }

        if (paid < challenge.AmountMicro || paid > long.MaxValue)
        {
            return Reject(challenge, X402Errors.ValueMismatch, $"The transaction pays {paid}, below the required {challenge.AmountMicro}.");
        }

        // A proof buys no call: the whole payment becomes the credit note, so it needs a community to credit. Refused
        // before the transaction is claimed, so the payer can present it again with a token.
        if (await communities.ResolveAsync(token, payer, ct) is not { } community)
        {
            return token is null
                ? Problems.Unauthorized("A payment proof is credited to the caller's community: send it with the bearer token of that community's user.")
                : Problems.Forbidden("The bearer token names no community to credit the payment proof to.");
        }

        var row = new PaymentRow
        {
            Id = "pay_" + Guid.NewGuid().ToString("N"),
            Kind = "proof",
            X402Version = 1,
            Network = o.Network,
            Asset = o.Asset.ToLowerInvariant(),
            Payer = payer.ToLowerInvariant(),
            Nonce = tx,
            PayloadHash = tx,
            PayloadJson = "{}",
            RequirementJson = challenge.V2Requirement.ToJsonString(),
            AmountRequiredMicro = challenge.AmountMicro,
            ValueMicro = (long)paid,
            CommunityId = community,
            State = PaymentStates.Settling,
            TxHash = tx,
            CostMicro = 0,
        };
        var (inserted, stored) = await store.ClaimAsync(row, ct);
        if (!inserted)
        {
            return Known(stored);
        }

        metrics.Created(row.Kind);
        PaymentLog.PaymentCreated(logger, row.Id, row.Payer, row.ValueMicro);
        return await flow.FinishAsync(row, tx, ct);
    }

    /// <summary>A payment already holds this transaction: its own proof replays, anything else (an x402 settlement) is never credited again.</summary>
    IResult Known(PaymentRow known)
    {
        if (known.Kind != "proof")
        {
            metrics.Failed(X402Errors.TransactionClaimed);
            PaymentLog.PaymentRejected(logger, X402Errors.TransactionClaimed);
            return Problems.Create(409, X402Errors.TransactionClaimed, "This transaction settled an x402 payment, which already carries its credit note.");
        }

        return known.State is PaymentStates.Settled or PaymentStates.Failed ? flow.Replay(known)
            : Problems.Create(409, X402Errors.DuplicateSettlement, "This transaction is already being credited.");
    }

    IResult Reject(PaymentChallenge challenge, string code, string detail)
    {
        metrics.Failed(code);
        PaymentLog.PaymentRejected(logger, code);
        return PaymentRequirementsBuilder.ToResult(challenge, code, detail);
    }
}
