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
/// The legacy <c>X-Payment-Proof: &lt;tx hash&gt;</c> path: reads the receipt over JSON-RPC, checks a USDC
/// <c>Transfer</c> log to payTo of at least the amount (or, only when <c>X402:NativeMicroPerWei</c> &gt; 0, a plain
/// native-value transfer, which is what the launch gate's <c>cast send --value</c> makes), then issues a credit note
/// for the whole payment. The same transaction twice gives one note (unique tx hash).
/// </summary>
public sealed partial class LegacyProof(PaymentStore store, PaymentFlow flow, IPayerCommunityResolver communities, PaymentMetrics metrics,
    IOptions<X402Options> options, ILogger<LegacyProof> logger)
{
    static readonly string TransferTopic = "0x" + Sha3Keccack.Current.CalculateHash("Transfer(address,address,uint256)");

    [GeneratedRegex(@"^0x[0-9a-fA-F]{64}\z")]
    private static partial Regex TxHash();

    public async Task<IResult> HandleAsync(string proof, PaymentChallenge challenge, JsonWebToken? token, CancellationToken ct)
    {
        var o = options.Value;
        proof = proof.Trim();
        if (!TxHash().IsMatch(proof))
        {
            return Problems.Create(400, X402Errors.ProofInvalid, "X-Payment-Proof must be a 0x-prefixed 32-byte transaction hash.");
        }

        var tx = proof.ToLowerInvariant();
        if (await store.FindByTxAsync(tx, ct) is { } known)
        {
            return known.State is PaymentStates.Settled or PaymentStates.Failed ? flow.Replay(known)
                : Problems.Create(409, X402Errors.DuplicateSettlement, "This transaction is already being credited.");
        }

        var web3 = new Web3(o.RpcUrl);
        string payer;
        BigInteger paid = 0;
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

            payer = receipt.From;
            var payTo = "0x000000000000000000000000" + o.PayTo[2..].ToLowerInvariant();
            foreach (var log in receipt.Logs ?? [])
            {
                var address = log.Address;
                var topics = log.Topics?.Select(t => t?.ToString()?.ToLowerInvariant() ?? "").ToArray() ?? [];
                if (address is not null && AuthorizationVerifier.Same(address, o.Asset) && topics.Length == 3 && topics[0] == TransferTopic && topics[2] == payTo)
                {
                    paid += new HexBigInteger(log.Data).Value;
                    payer = "0x" + topics[1][26..];
                }
            }

            if (paid == 0 && o.NativeMicroPerWei > 0)
            {
                var transaction = await web3.Eth.Transactions.GetTransactionByHash.SendRequestAsync(tx);
                if (transaction?.To is { } to && AuthorizationVerifier.Same(to, o.PayTo) && transaction.Value?.Value > 0)
                {
                    paid = transaction.Value.Value * o.NativeMicroPerWei;
                    payer = transaction.From;
                }
            }
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            logger.LogWarning(ex, "x402 legacy proof lookup failed");
            return Problems.Create(502, X402Errors.UnexpectedVerifyError, "The chain could not be queried for the payment proof.");
        }

        if (paid == 0)
        {
            return Reject(challenge, X402Errors.RecipientMismatch, "The transaction pays nothing to the payment address.");
        }

        if (paid < challenge.AmountMicro || paid > long.MaxValue)
        {
            return Reject(challenge, X402Errors.ValueMismatch, $"The transaction pays {paid}, below the required {challenge.AmountMicro}.");
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
            CommunityId = await communities.ResolveAsync(token, payer, ct),
            State = PaymentStates.Settling,
            TxHash = tx,
            CostMicro = 0,
        };
        var (inserted, stored) = await store.ClaimAsync(row, ct);
        if (!inserted)
        {
            return stored.State is PaymentStates.Settled or PaymentStates.Failed ? flow.Replay(stored)
                : Problems.Create(409, X402Errors.DuplicateSettlement, "This transaction is already being credited.");
        }

        metrics.Created(row.Kind);
        PaymentLog.PaymentCreated(logger, row.Id, row.Payer, row.ValueMicro);
        return await flow.FinishAsync(row, tx, ct);
    }

    IResult Reject(PaymentChallenge challenge, string code, string detail)
    {
        metrics.Failed(code);
        PaymentLog.PaymentRejected(logger, code);
        return PaymentRequirementsBuilder.ToResult(challenge, code, detail);
    }
}
