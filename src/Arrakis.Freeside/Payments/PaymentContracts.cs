using System.Text.Json.Nodes;
using Microsoft.IdentityModel.JsonWebTokens;

namespace Arrakis.Freeside.Payments;

/// <summary>A paid invoke, handed to the invoke pipeline after the payment verified (nothing settled yet).</summary>
/// <param name="Body">The exact invoke body the client posted (<c>{prompt|messages, model?, max_tokens?...}</c>).</param>
/// <param name="UserToken">The verified user token, when one was sent.</param>
/// <param name="CommunityId">The payer's community, when known.</param>
/// <param name="MaxCostMicro">The worst-case cost the payment covers; the metered cost must not exceed it.</param>
public sealed record PaidInvocationRequest(string PaymentId, JsonObject Body, JsonWebToken? UserToken, string? CommunityId, string Payer, long MaxCostMicro);

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
