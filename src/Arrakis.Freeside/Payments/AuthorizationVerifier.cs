using System.Globalization;
using System.Numerics;
using Microsoft.Extensions.Options;
using Nethereum.ABI.EIP712;
using Nethereum.ABI.FunctionEncoding.Attributes;
using Nethereum.Hex.HexConvertors.Extensions;
using Nethereum.Signer.EIP712;

namespace Arrakis.Freeside.Payments;

/// <summary>The EIP-3009 <c>TransferWithAuthorization</c> struct, as typed data for EIP-712.</summary>
[Struct("TransferWithAuthorization")]
public sealed class TransferWithAuthorization
{
    [Parameter("address", "from", 1)]
    public string From { get; set; } = "";

    [Parameter("address", "to", 2)]
    public string To { get; set; } = "";

    [Parameter("uint256", "value", 3)]
    public BigInteger Value { get; set; }

    [Parameter("uint256", "validAfter", 4)]
    public BigInteger ValidAfter { get; set; }

    [Parameter("uint256", "validBefore", 5)]
    public BigInteger ValidBefore { get; set; }

    [Parameter("bytes32", "nonce", 6)]
    public byte[] Nonce { get; set; } = [];

    public static TransferWithAuthorization From3009(Eip3009Authorization a) => new()
    {
        From = a.From,
        To = a.To,
        Value = BigInteger.Parse(a.Value, CultureInfo.InvariantCulture),
        ValidAfter = BigInteger.Parse(a.ValidAfter, CultureInfo.InvariantCulture),
        ValidBefore = BigInteger.Parse(a.ValidBefore, CultureInfo.InvariantCulture),
        Nonce = a.Nonce.HexToByteArray(),
    };
}

/// <summary>EIP-712 typed data for USDC's <c>transferWithAuthorization</c>: domain name/version from config, chain id, asset as verifying contract.</summary>
public static class Eip3009TypedData
{
    public static TypedData<Domain> For(X402Options o) => new()
    {
        Domain = new Domain { Name = o.AssetName, Version = o.AssetVersion, ChainId = o.ChainId, VerifyingContract = o.Asset },
        Types = MemberDescriptionFactory.GetTypesMemberDescription(typeof(Domain), typeof(TransferWithAuthorization)),
        PrimaryType = "TransferWithAuthorization",
    };

    /// <summary>secp256k1's order n, halved: USDC's ECRecover refuses an s above it (the malleable twin of a signature).</summary>
    static readonly BigInteger HalfOrder = BigInteger.Parse("7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0", NumberStyles.HexNumber, CultureInfo.InvariantCulture);

    /// <summary>
    /// Recovers the signer address of <paramref name="signature"/> (0x r ‖ s ‖ v) over the authorization; null when it cannot
    /// be recovered or the token contract would refuse it: v other than 27/28, s zero or in the upper half of the order.
    /// Any failure inside Nethereum or BouncyCastle (r out of range, no point on the curve) is an invalid signature too:
    /// they throw plain <see cref="Exception"/> among others, and none of it may become a 500.
    /// </summary>
    public static string? Recover(X402Options o, Eip3009Authorization authorization, string signature)
    {
        try
        {
            var bytes = signature.HexToByteArray();
            if (bytes.Length != 65 || bytes[64] is not (27 or 28))
            {
                return null;
            }

            var s = new BigInteger(bytes.AsSpan(32, 32), isUnsigned: true, isBigEndian: true);
            if (s.IsZero || s > HalfOrder)
            {
                return null;
            }

            return new Eip712TypedDataSigner().RecoverFromSignatureV4(TransferWithAuthorization.From3009(authorization), For(o), signature);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            return null;
        }
    }
}

/// <summary>
/// Local verification of an exact-EVM payment before anything settles, in the spec's order; each failure has its own
/// error code. The unused-nonce check is the store's unique key, applied when the payment is claimed.
/// </summary>
public sealed class AuthorizationVerifier(IOptions<X402Options> options, TimeProvider time)
{
    public PaymentRejection? Verify(DecodedPayment payment, long requiredAmountMicro)
    {
        var o = options.Value;
        if (payment.Scheme != "exact")
        {
            return Reject(X402Errors.InvalidScheme, $"Only the exact scheme is accepted, not '{payment.Scheme}'.");
        }

        var network = payment.Version == 1 ? o.V1Network : o.Network;
        if (payment.Network != network)
        {
            return Reject(X402Errors.InvalidNetwork, $"The network must be {network}, not '{payment.Network}'.");
        }

        if (payment.Asset is not null && !Same(payment.Asset, o.Asset))
        {
            return Reject(X402Errors.AssetMismatch, $"The asset must be {o.Asset}.");
        }

        if (payment.PayTo is not null && !Same(payment.PayTo, o.PayTo))
        {
            return Reject(X402Errors.RecipientMismatch, "The accepted payTo is not ours.");
        }

        var recovered = Eip3009TypedData.Recover(o, payment.Authorization, payment.Signature);
        if (recovered is null || !Same(recovered, payment.Authorization.From))
        {
            return Reject(X402Errors.InvalidSignature, "The signature does not recover to authorization.from.");
        }

        if (!Same(payment.Authorization.To, o.PayTo))
        {
            return Reject(X402Errors.RecipientMismatch, $"authorization.to must be {o.PayTo}.");
        }

        var value = BigInteger.Parse(payment.Authorization.Value, CultureInfo.InvariantCulture);
        if (value < requiredAmountMicro)
        {
            return Reject(X402Errors.ValueMismatch, $"authorization.value {value} is below the required {requiredAmountMicro}.");
        }

        if (value > long.MaxValue)
        {
            return Reject(X402Errors.ValueMismatch, "authorization.value is out of range.");
        }

        var now = time.GetUtcNow().ToUnixTimeSeconds();
        if (BigInteger.Parse(payment.Authorization.ValidAfter, CultureInfo.InvariantCulture) > now)
        {
            return Reject(X402Errors.ValidAfter, "The authorization is not valid yet.");
        }

        if (BigInteger.Parse(payment.Authorization.ValidBefore, CultureInfo.InvariantCulture) - o.ValidBeforeBufferSeconds <= now)
        {
            return Reject(X402Errors.ValidBefore, $"The authorization expires too soon (needs validBefore > now + {o.ValidBeforeBufferSeconds} s).");
        }

        return null;
    }

    public static bool Same(string a, string b) => string.Equals(a, b, StringComparison.OrdinalIgnoreCase);

    static PaymentRejection Reject(string code, string detail) => new(402, code, detail);
}
