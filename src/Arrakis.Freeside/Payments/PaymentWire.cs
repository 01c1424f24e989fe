using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Arrakis.Freeside.Payments;

/// <summary>x402 header names, v1 and v2 (coinbase/x402 transports-v1/http.md and transports-v2/http.md).</summary>
public static class X402Headers
{
    public const string PaymentRequired = "PAYMENT-REQUIRED";
    public const string PaymentSignature = "PAYMENT-SIGNATURE";
    public const string PaymentResponse = "PAYMENT-RESPONSE";
    public const string XPayment = "X-PAYMENT";
    public const string XPaymentResponse = "X-PAYMENT-RESPONSE";
    public const string XPaymentRequired = "X-Payment-Required";
    public const string XPrice = "X-Price";
    public const string XPaymentProof = "X-Payment-Proof";

    /// <summary>The payer's EIP-191 signature of <see cref="LegacyProof.Message"/>: proves the presenter is the payer.</summary>
    public const string XPaymentProofSignature = "X-Payment-Proof-Signature";
}

/// <summary>The spec's error codes (x402 v2 §9) plus our terminal duplicate codes.</summary>
public static class X402Errors
{
    public const string InvalidPayload = "invalid_payload";
    public const string InvalidVersion = "invalid_x402_version";
    public const string InvalidScheme = "invalid_scheme";
    public const string UnsupportedScheme = "unsupported_scheme";
    public const string InvalidNetwork = "invalid_network";
    public const string InvalidPaymentRequirements = "invalid_payment_requirements";
    public const string InvalidSignature = "invalid_exact_evm_payload_signature";
    public const string RecipientMismatch = "invalid_exact_evm_payload_recipient_mismatch";
    public const string ValueMismatch = "invalid_exact_evm_payload_authorization_value_mismatch";
    public const string ValidAfter = "invalid_exact_evm_payload_authorization_valid_after";
    public const string ValidBefore = "invalid_exact_evm_payload_authorization_valid_before";
    public const string AssetMismatch = "invalid_exact_evm_payload_asset_mismatch";
    public const string NonceUsed = "nonce_already_used";
    public const string DuplicateSettlement = "duplicate_settlement";
    public const string SettlementPending = "settlement_pending";
    public const string PaymentIdentifierConflict = "payment_identifier_conflict";
    public const string InvalidTransactionState = "invalid_transaction_state";
    public const string UnexpectedSettleError = "unexpected_settle_error";
    public const string UnexpectedVerifyError = "unexpected_verify_error";
    public const string PaymentRequired = "payment_required";
    public const string InvokeFailed = "invoke_failed";
    public const string InsufficientFunds = "insufficient_funds";
    public const string ProofInvalid = "invalid_payment_proof";
    public const string ProofPending = "payment_proof_unconfirmed";

    /// <summary>The proof's transaction is an EIP-3009 settlement: that money is counted on the x402 path, never as a proof.</summary>
    public const string ProofIsSettlement = "payment_proof_is_x402_settlement";

    /// <summary>A legacy proof came without the payer's signature, which this deployment requires.</summary>
    public const string ProofSignatureRequired = "payment_proof_signature_required";

    /// <summary>The proof's signature is malformed, or it was not made by the account that sent the transaction.</summary>
    public const string ProofNotSignedByPayer = "payment_proof_not_signed_by_payer";

    /// <summary>The settlement transaction already belongs to another payment: one transaction, one credit note.</summary>
    public const string TransactionClaimed = "transaction_already_claimed";

    /// <summary>A settler's answer when the payment was no longer <c>settling</c>: another worker or recovery owns it (never sent to clients).</summary>
    public const string PaymentNotSettling = "payment_not_settling";
}

/// <summary>The EIP-3009 authorization of an <c>exact</c> EVM payload. All fields are strings on the wire.</summary>
public sealed record Eip3009Authorization(string From, string To, string Value, string ValidAfter, string ValidBefore, string Nonce);

/// <summary>
/// A decoded payment header (v1 <c>X-PAYMENT</c> or v2 <c>PAYMENT-SIGNATURE</c>), normalized: the v1 network name and
/// v2 <c>accepted</c> requirement both end up in <see cref="Scheme"/>/<see cref="Network"/>/<see cref="Asset"/>.
/// </summary>
public sealed record DecodedPayment(
    int Version,
    string Scheme,
    string Network,
    string? Asset,
    string? PayTo,
    string Signature,
    Eip3009Authorization Authorization,
    string? PaymentIdentifier,
    JsonObject Raw,
    string PayloadHash);

/// <summary>Base64 JSON in and out of headers.</summary>
public static class X402Codec
{
    static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    public static string Encode(JsonNode node) => Convert.ToBase64String(Encoding.UTF8.GetBytes(node.ToJsonString(Json)));

    public static string Encode<T>(T value) => Convert.ToBase64String(JsonSerializer.SerializeToUtf8Bytes(value, Json));

    public static JsonNode? DecodeNode(string base64) => JsonNode.Parse(Encoding.UTF8.GetString(Convert.FromBase64String(base64)));
}
