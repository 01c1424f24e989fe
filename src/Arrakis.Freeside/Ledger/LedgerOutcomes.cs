using System.Text.Json.Serialization;

namespace Arrakis.Freeside.Ledger;

public enum ReserveStatus
{
    Reserved,
    Duplicate,
    BudgetExceeded,
    WalletInsufficient,
    CommunityNotFound,
    Invalid,

    /// <summary>The idempotency key given to <see cref="Ledger.ReserveAsync(string, string, long, TimeSpan?, LedgerKeyClaim?, CancellationToken)"/> was already claimed: nothing was reserved.</summary>
    KeyTaken,
}

/// <summary>
/// What a reserve did. Remaining amounts are what the budget and the wallet could still cover after (or, on refusal, before)
/// it; an <see cref="ReserveStatus.Invalid"/> one names the argument at fault in <paramref name="Field"/>.
/// </summary>
public sealed record ReserveResult(ReserveStatus Status, string ReservationId, long AmountMicro, long BudgetRemainingMicro, long WalletAvailableMicro, string? Detail = null, string? Field = null)
{
    public bool Admitted => Status is ReserveStatus.Reserved or ReserveStatus.Duplicate;
}

public enum FinalizeStatus
{
    Finalized,
    Duplicate,
    NotFound,
    AlreadyReleased,
    Expired,
    ExceedsReservation,
    Invalid,
}

public sealed record FinalizeResult(FinalizeStatus Status, string ReservationId, long ReservedMicro, long ActualMicro, long ReleasedMicro, string? Detail = null);

public enum ReleaseStatus
{
    Released,
    Duplicate,
    NotFound,
    AlreadyFinalized,
    Expired,
    Invalid,
}

public sealed record ReleaseResult(ReleaseStatus Status, string ReservationId, long ReleasedMicro, string? Detail = null);

public enum GrantStatus
{
    Granted,
    Duplicate,
    Conflict,
    CommunityNotFound,
    Invalid,
}

/// <summary>
/// What a grant did (the body of the grant route's answer); an <see cref="GrantStatus.Invalid"/> one names the argument at
/// fault in <paramref name="Field"/>, which the route answers as the problem's <c>field</c>.
/// </summary>
public sealed record GrantResult(GrantStatus Status, string LotId, long AmountMicro, string? Detail = null, [property: JsonIgnore] string? Field = null);

/// <summary>Where a credit lot came from (DESIGN §3).</summary>
public static class CreditSources
{
    public static readonly IReadOnlySet<string> All = new HashSet<string>(StringComparer.Ordinal) { "purchase", "grant", "seed", "x402", "transfer_in" };
}

/// <summary>The metered facts of one finalized call; cost is the finalized amount.</summary>
public sealed record UsageRecord(
    string? AgentId = null,
    string? Pool = null,
    string? Model = null,
    long PromptTokens = 0,
    long CompletionTokens = 0,
    string? TraceId = null,
    string? IdempotencyKey = null);

/// <summary>A stored usage record.</summary>
public sealed record UsageEntry(
    string Id,
    string CommunityId,
    string Month,
    string? AgentId,
    string? Pool,
    string? Model,
    long PromptTokens,
    long CompletionTokens,
    long CostMicro,
    string? TraceId,
    string? IdempotencyKey,
    long CreatedAt);

/// <summary>Validation shared by the ledger and its routes.</summary>
public static class LedgerIds
{
    /// <summary>Larger amounts are refused so sums of many of them cannot overflow a 64-bit column ($1 billion).</summary>
    public const long MaxAmountMicro = 1_000_000_000_000_000;

    public const int MaxIdLength = 255;

    /// <summary>Ids are 1–255 printable ASCII characters from a safe set (letters, digits and <c>. _ : - @</c>).</summary>
    public static bool IsValid(string? id)
    {
        if (string.IsNullOrEmpty(id) || id.Length > MaxIdLength)
        {
            return false;
        }

        foreach (var c in id)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or ':' or '-' or '@'))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>The refusal of an id that is not <see cref="IsValid"/>, naming its field.</summary>
    public static string Rule(string field) => $"{field} must be 1-255 characters of [A-Za-z0-9._:@-].";

    /// <summary>The field of the first id that is not <see cref="IsValid"/>, or null when all are.</summary>
    public static string? FirstInvalid(params ReadOnlySpan<(string Field, string? Value)> ids)
    {
        foreach (var (field, value) in ids)
        {
            if (!IsValid(value))
            {
                return field;
            }
        }

        return null;
    }

    public static bool IsValidAmount(long amountMicro) => amountMicro > 0 && amountMicro <= MaxAmountMicro;

    public static string Month(DateTimeOffset now) => now.UtcDateTime.ToString("yyyy-MM", System.Globalization.CultureInfo.InvariantCulture);

    public static string Wallet(string communityId) => communityId + ":wallet";

    public static string Spend(string communityId) => communityId + ":spend";

    public static string Issuance(string communityId) => communityId + ":issuance";

    public static string Expired(string communityId) => communityId + ":expired";
}

/// <summary>A reservation as stored: status is pending, posted, voided or expired.</summary>
public sealed record ReservationState(string Id, string CommunityId, string Status, long AmountMicro, long? ActualMicro);
