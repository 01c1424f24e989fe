using System.ComponentModel.DataAnnotations;
using System.Text.RegularExpressions;
using Arrakis.Freeside.Identity;

namespace Arrakis.Freeside.Payments;

/// <summary>Which settler turns a verified authorization into an on-chain transfer.</summary>
public enum SettlerKind
{
    /// <summary>An x402 facilitator over HTTP (<c>/verify</c>, <c>/settle</c>, <c>/supported</c>).</summary>
    Facilitator,

    /// <summary><c>transferWithAuthorization</c> submitted over JSON-RPC with our own relayer key.</summary>
    Direct,
}

/// <summary>The <c>X402</c> configuration section. Defaults answer 402 out of the box on Base Sepolia.</summary>
public sealed partial class X402Options : IValidatableObject
{
    public const string Section = "X402";

    /// <summary>
    /// Clearly a placeholder: a well-known public test address (anvil dev account #9). Configure your own
    /// <c>X402:PayTo</c> before accepting real payments.
    /// </summary>
    public const string TestPayTo = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720";

    public const string BaseSepoliaUsdc = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";

    public string PayTo { get; set; } = TestPayTo;

    /// <summary>CAIP-2 network for v2.</summary>
    public string Network { get; set; } = "eip155:84532";

    /// <summary>Network name for v1.</summary>
    public string V1Network { get; set; } = "base-sepolia";

    [Range(1, long.MaxValue)]
    public long ChainId { get; set; } = 84532;

    public string Asset { get; set; } = BaseSepoliaUsdc;

    public string AssetName { get; set; } = "USDC";

    public string AssetVersion { get; set; } = "2";

    [Range(10, 3600)]
    public int MaxTimeoutSeconds { get; set; } = 60;

    /// <summary>An authorization must stay valid this long past now (the reference facilitator's block-time buffer).</summary>
    [Range(0, 600)]
    public int ValidBeforeBufferSeconds { get; set; } = 6;

    /// <summary>The pool priced, and run by a paid call, when the body names no model.</summary>
    public string DefaultPool { get; set; } = "cheap";

    /// <summary>Smallest amount ever asked for, so a tiny prompt still costs something on chain.</summary>
    [Range(1, long.MaxValue)]
    public long MinimumAmountMicro { get; set; } = 1_000;

    public SettlerKind Settler { get; set; } = SettlerKind.Facilitator;

    public string FacilitatorUrl { get; set; } = "https://x402.org/facilitator";

    /// <summary>Timeout of each facilitator HTTP call (<c>/verify</c>, <c>/settle</c>, <c>/supported</c>), in seconds.</summary>
    [Range(1, 600)]
    public int FacilitatorTimeoutSeconds { get; set; } = 60;

    /// <summary>JSON-RPC endpoint for direct settlement and the legacy proof path.</summary>
    public string RpcUrl { get; set; } = "http://127.0.0.1:8545";

    /// <summary>Hex private key of the relayer that pays gas for direct settlement. Required for <see cref="SettlerKind.Direct"/>.</summary>
    public string? RelayerKey { get; set; }

    /// <summary>Confirmations a legacy <c>X-Payment-Proof</c> transaction needs (1 = mined).</summary>
    [Range(1, 1000)]
    public int Confirmations { get; set; } = 1;

    /// <summary>
    /// Require <c>X-Payment-Proof-Signature</c> on a legacy proof: the payer's EIP-191 (<c>personal_sign</c>) signature of
    /// <c>arrakis x402 payment proof &lt;tx hash&gt;</c>. A transaction hash is public once mined, so without it anyone who
    /// sees the payment on chain can present it first and have its credit note issued to their own community. On by
    /// default; turn it off only where the presenter is trusted (a test chain, a client that cannot sign).
    /// </summary>
    public bool LegacyProofRequiresPayerSignature { get; set; } = true;

    /// <summary>
    /// Micro-USD credited per wei of a plain native-value transfer on the legacy proof path (the launch gate's
    /// <c>cast send --value</c>). 0 (the default) refuses native transfers; set it only on test chains.
    /// </summary>
    [Range(0, long.MaxValue)]
    public long NativeMicroPerWei { get; set; }

    /// <summary>Send the v2 <c>PAYMENT-REQUIRED</c> header. Off only to exercise the v1 body path with v2-capable clients.</summary>
    public bool AdvertiseV2 { get; set; } = true;

    /// <summary>
    /// Rows untouched this long in <c>verified</c> (failed: the invoke never finished) or <c>settling</c> (settlement resumed)
    /// are recovered. It must outlast a live paid request, at least <see cref="MinimumRecoveryAfterSeconds"/>, so recovery
    /// never takes a row a request still handles.
    /// </summary>
    [Range(1, 86400)]
    public int RecoveryAfterSeconds { get; set; } = 300;

    /// <summary>Slack on top of the facilitator and finn timeouts before recovery may take a row.</summary>
    public static readonly TimeSpan RecoveryMargin = TimeSpan.FromSeconds(30);

    /// <summary>The longest a live paid request holds a row untouched: the facilitator's /verify, then the finn call, plus a margin.</summary>
    public int MinimumRecoveryAfterSeconds => FacilitatorTimeoutSeconds + (int)Math.Ceiling(IdentitySetup.FinnTimeout.TotalSeconds) + (int)RecoveryMargin.TotalSeconds;

    [Range(1, 3600)]
    public int RecoveryIntervalSeconds { get; set; } = 30;

    /// <summary>
    /// When the facilitator refuses a settlement (or the direct settler's recorded transaction can never be mined), freeside
    /// asks the chain (<see cref="RpcUrl"/>) whether the authorization was already used, in this many most recent blocks
    /// (about a day on Base), and if so settles with that transaction: a crash after the facilitator settled but before
    /// freeside recorded it must not lose the payer's credit note. An authorization used on chain with neither its
    /// <c>AuthorizationUsed</c> nor its <c>AuthorizationCanceled</c> event in the window keeps the payment settling and is
    /// logged (<c>SettlementUnlocated</c>) until this is raised.
    /// </summary>
    [Range(1, 10_000_000)]
    public long SettlementLookbackBlocks { get; set; } = 43_200;

    [GeneratedRegex(@"^0x[0-9a-fA-F]{40}\z")]
    private static partial Regex AddressPattern();

    [GeneratedRegex(@"^(0x)?[0-9a-fA-F]{64}\z")]
    private static partial Regex KeyPattern();

    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        if (!AddressPattern().IsMatch(PayTo))
        {
            yield return new ValidationResult("X402:PayTo must be a 0x-prefixed 20-byte hex address.", [nameof(PayTo)]);
        }

        if (!AddressPattern().IsMatch(Asset))
        {
            yield return new ValidationResult("X402:Asset must be a 0x-prefixed 20-byte hex address.", [nameof(Asset)]);
        }

        if (!Network.StartsWith("eip155:", StringComparison.Ordinal) || Network != $"eip155:{ChainId}")
        {
            yield return new ValidationResult("X402:Network must be the CAIP-2 id eip155:<ChainId>.", [nameof(Network)]);
        }

        if (string.IsNullOrWhiteSpace(AssetName) || string.IsNullOrWhiteSpace(AssetVersion))
        {
            yield return new ValidationResult("X402:AssetName and X402:AssetVersion are required (EIP-712 domain).", [nameof(AssetName)]);
        }

        if (Settler == SettlerKind.Direct && (RelayerKey is null || !KeyPattern().IsMatch(RelayerKey)))
        {
            yield return new ValidationResult("X402:RelayerKey (32-byte hex) is required when X402:Settler is Direct.", [nameof(RelayerKey)]);
        }

        if (Settler == SettlerKind.Facilitator && !Uri.TryCreate(FacilitatorUrl, UriKind.Absolute, out _))
        {
            yield return new ValidationResult("X402:FacilitatorUrl must be an absolute URL.", [nameof(FacilitatorUrl)]);
        }

        if (!Uri.TryCreate(RpcUrl, UriKind.Absolute, out _))
        {
            yield return new ValidationResult("X402:RpcUrl must be an absolute URL.", [nameof(RpcUrl)]);
        }

        if (RecoveryAfterSeconds < MinimumRecoveryAfterSeconds)
        {
            yield return new ValidationResult(
                $"X402:RecoveryAfterSeconds ({RecoveryAfterSeconds}) must be at least X402:FacilitatorTimeoutSeconds ({FacilitatorTimeoutSeconds}) + the finn call timeout " +
                $"({IdentitySetup.FinnTimeout.TotalSeconds:0}) + {RecoveryMargin.TotalSeconds:0} = {MinimumRecoveryAfterSeconds} seconds, so recovery never takes a payment a live " +
                "request still handles: raise X402:RecoveryAfterSeconds or lower X402:FacilitatorTimeoutSeconds.",
                [nameof(RecoveryAfterSeconds)]);
        }
    }
}
