using System.Text.Json.Nodes;
using Microsoft.IdentityModel.JsonWebTokens;

namespace Arrakis.Freeside.Payments;

/// <summary>A paid invoke, handed to the invoke pipeline after the payment verified (nothing settled yet).</summary>
/// <param name="Body">The exact invoke body the client posted (<c>{prompt|messages, model?, max_tokens?...}</c>).</param>
/// <param name="UserToken">The verified user token, when one was sent.</param>
/// <param name="CommunityId">The payer's community, when known.</param>
/// <param name="MaxCostMicro">The worst-case cost the payment covers; the metered cost must not exceed it.</param>
/// <param name="Report">Where the call reports what its request's INVOKE_COMPLETE line says about it.</param>
public sealed record PaidInvocationRequest(string PaymentId, JsonObject Body, JsonWebToken? UserToken, string? CommunityId, string Payer, long MaxCostMicro,
    PaidCallReport? Report = null);

/// <summary>
/// What a paid call reports for its request's one INVOKE_COMPLETE line and the invoke metrics, filled in by the invoke
/// feature as the call runs. The line is logged once the request has been answered, after settlement, with the status
/// the client got (<c>InvokeApi.LogAnsweredBeforeTheHandlerAsync</c>); the payment flow says how the settlement ended.
/// </summary>
public sealed class PaidCallReport
{
    public string? Pool { get; set; }

    public string? Model { get; set; }

    public string CommunityId { get; set; } = "";

    public string? TraceId { get; set; }

    /// <summary>The metered cost; logged and counted only when the payment settled or is settling.</summary>
    public long CostMicro { get; set; }

    public long PromptTokens { get; set; }

    public long CompletionTokens { get; set; }

    /// <summary>
    /// The call's outcome: <c>rejected</c> (refused before it ran), <c>upstream_failed</c>, <c>error</c>, or, for a call
    /// that succeeded, how its settlement ended: <c>paid</c>, <c>settlement_pending</c>, <c>settlement_failed</c>.
    /// </summary>
    public string? Outcome { get; set; }

    /// <summary>The call reached finn: it counts in the invoke metrics.</summary>
    public bool Ran { get; set; }

    /// <summary>
    /// How long the call itself took (checks and finn), once it has returned or thrown: the pool's InferenceLatencyMs,
    /// which does not include the settlement that follows (the line's duration_ms does).
    /// </summary>
    public double? CallMs { get; set; }
}

/// <summary>
/// The invoke's outcome: only a success is settled. <paramref name="CostMicro"/> is the metered cost;
/// <paramref name="RetryAfter"/>, when a failure says when to come back (finn's 503 "no healthy model").
/// </summary>
public sealed record PaidInvocationResult(bool Success, int StatusCode, long CostMicro, JsonNode? Body, TimeSpan? RetryAfter = null);

/// <summary>Runs a paid invoke through the invoke pipeline (implemented and registered by the invoke feature).</summary>
public interface IPaidInvocation
{
    Task<PaidInvocationResult> RunAsync(PaidInvocationRequest request, CancellationToken ct);
}

/// <summary>A credit note: paid minus metered cost, granted as a credit lot (source <c>x402</c>) to a community.</summary>
public sealed record CreditNote(string Id, string PaymentId, string CommunityId, string LotId, long AmountMicro, string Transaction, string Payer, DateTimeOffset ExpiresAt);

/// <summary>
/// Where credit notes become ledger credit lots (wired to the ledger's <c>GrantAsync(communityId, lotId, amountMicro, "x402", expiresAt)</c>).
/// Must be idempotent on <see cref="CreditNote.LotId"/>: recovery may grant the same note again after a crash.
/// </summary>
public interface ICreditNoteSink
{
    Task GrantAsync(CreditNote note, CancellationToken ct);
}

/// <summary>Finds the community a payment credits: the token's community, else a community bound to the payer's wallet.</summary>
public interface IPayerCommunityResolver
{
    Task<string?> ResolveAsync(JsonWebToken? userToken, string payerAddress, CancellationToken ct);
}

/// <summary>
/// Default until the ledger wires tenant aliases and wallet bindings: the token's <c>community_id</c> claim, else its
/// <c>tenant_id</c>; no wallet bindings.
/// </summary>
internal sealed class ClaimCommunityResolver : IPayerCommunityResolver
{
    public Task<string?> ResolveAsync(JsonWebToken? userToken, string payerAddress, CancellationToken ct)
    {
        if (userToken is null)
        {
            return Task.FromResult<string?>(null);
        }

        if (userToken.TryGetPayloadValue<string>("community_id", out var community) && !string.IsNullOrEmpty(community))
        {
            return Task.FromResult<string?>(community);
        }

        return Task.FromResult<string?>(userToken.TryGetPayloadValue<string>("tenant_id", out var tenant) && !string.IsNullOrEmpty(tenant) ? tenant : null);
    }
}
