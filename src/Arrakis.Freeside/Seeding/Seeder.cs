using System.Diagnostics.Metrics;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using Arrakis.Freeside.Communities;
using Arrakis.Freeside.Ledger;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Storage;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Freeside.Seeding;

/// <summary>The seed could not be applied: the data or a running freeside refused a step (not a defect of the seeder).</summary>
public sealed class SeedFailedException(string message) : Exception(message);

/// <summary>
/// The launch checklist's test data (reference/freeside-launch-gate.md §4.1), upserted so re-runs are safe. Credits
/// go through the ledger: a 5000-cent grant and a recorded 2000-cent spend leave the lot with 3000 cents.
/// </summary>
public sealed class Seeder(CommunityStore communities, Ledger.Ledger ledger, TimeProvider time)
{
    public const string CommunityId = "test-community-staging-001";
    public const string CommunityName = "Staging Test Community";
    public const long BudgetCents = 10_000;
    public const string TenantAlias = "test-tenant";
    public const string AgentId = "test-agent-staging-001";
    public const string AgentIdB = "test-agent-staging-002";
    public const string NftContract = "0x0000000000000000000000000000000000000001";
    public const string NftContractB = "0x0000000000000000000000000000000000000002";
    public const string NftTokenId = "1";
    public const string CreditLotId = "test-credit-lot-staging-001";
    public const string SpendReservationId = "test-credit-lot-staging-001-spend";
    public const long LotCents = 5_000;
    public const long SpentCents = 2_000;

    /// <summary>
    /// The ids the seed spend is recorded under, in order: the first, then one per earlier seed that reserved an id and
    /// stopped before finalizing it (that hold expires and charges nothing, and its id cannot be finalized any more).
    /// </summary>
    public static IReadOnlyList<string> SpendAttemptIds { get; } =
        [SpendReservationId, .. Enumerable.Range(2, 9).Select(n => $"{SpendReservationId}-{n}")];

    static string UnfinishedSpends => $"Recording the seed spend failed: {SpendAttemptIds.Count} earlier seeds reserved it and stopped before finalizing; nothing was charged for them. Check the freeside logs for why seeding stops.";

    /// <summary>The KEY=value lines the gate scripts read.</summary>
    public static IReadOnlyList<string> OutputLines =>
    [
        "COMMUNITY_ID=" + CommunityId,
        "AGENT_ID=" + AgentId,
        "AGENT_ID_B=" + AgentIdB,
        "NFT_CONTRACT=" + NftContract,
        "NFT_TOKEN_ID=" + NftTokenId,
        "NFT_CONTRACT_B=" + NftContractB,
        "CREDIT_LOT_ID=" + CreditLotId,
    ];

    /// <summary>What the seed does, step by step (for --dry-run).</summary>
    public static IReadOnlyList<string> PlanLines =>
    [
        $"upsert community {CommunityId} \"{CommunityName}\" tier=free monthly_budget_cents={BudgetCents}",
        $"upsert tenant alias {TenantAlias} -> {CommunityId}",
        $"upsert agent {AgentId} nft={NftContract}#{NftTokenId}",
        $"upsert agent {AgentIdB} nft={NftContractB}#{NftTokenId} created 7 days ago",
        $"grant credit lot {CreditLotId} of {LotCents} cents (source seed), idempotent on the lot id",
        $"record spend {SpendReservationId} of {SpentCents} cents through the ledger (reserve + finalize), leaving {LotCents - SpentCents} cents " +
            $"(under {SpendReservationId}-2, -3, ... when an earlier seed stopped before finalizing one)",
    ];

    /// <summary>A seeder over a service's database, outside a running host (the CLI uses this).</summary>
    public static Seeder For(Database db, TimeProvider? time = null)
    {
        time ??= TimeProvider.System;
        var meters = new ServiceCollection().AddMetrics().BuildServiceProvider().GetRequiredService<IMeterFactory>();
        return new Seeder(new CommunityStore(db, time), new Ledger.Ledger(db, time, new LedgerOptions(), new LedgerMetrics(meters)), time);
    }

    public async Task<IReadOnlyList<string>> SeedAsync(CancellationToken ct = default)
    {
        Check(await communities.UpsertAsync(CommunityId, CommunityName, Tier.Free, BudgetCents, ct), "community");
        Check(await communities.SetAliasAsync(TenantAlias, CommunityId, ct), "tenant alias");
        var now = time.GetUtcNow();
        Check(await communities.UpsertAgentAsync(new Agent(AgentId, "Staging Test Agent", CommunityId, NftContract, NftTokenId, now.ToUnixTimeMilliseconds()), ct), "agent");
        Check(await communities.UpsertAgentAsync(new Agent(AgentIdB, "Staging Test Agent B (Warming)", CommunityId, NftContractB, NftTokenId, now.AddDays(-7).ToUnixTimeMilliseconds()), ct), "agent B");
        var grant = await ledger.GrantAsync(CommunityId, CreditLotId, LotCents * 10_000, "seed", ct: ct);
        if (grant.Status is not (GrantStatus.Granted or GrantStatus.Duplicate))
        {
            throw new SeedFailedException($"Seeding the credit lot failed: {grant.Status} {grant.Detail}");
        }

        // A seed stopped between reserve and finalize leaves its hold, which the reaper expires, charging nothing; that id
        // can never be finalized, so the spend is recorded under the next attempt id. At most one attempt is ever posted.
        foreach (var spendId in SpendAttemptIds)
        {
            var reserve = await ledger.ReserveAsync(CommunityId, spendId, SpentCents * 10_000, ct: ct);
            if (!reserve.Admitted)
            {
                throw new SeedFailedException($"Recording the seed spend failed: {reserve.Status} {reserve.Detail}");
            }

            var final = await ledger.FinalizeAsync(spendId, SpentCents * 10_000, new UsageRecord(AgentId, "cheap", "seed", 0, 0, null, spendId), ct);
            if (final.Status is FinalizeStatus.Finalized or FinalizeStatus.Duplicate)
            {
                return OutputLines;
            }

            if (final.Status is not (FinalizeStatus.Expired or FinalizeStatus.AlreadyReleased))
            {
                throw new SeedFailedException($"Recording the seed spend failed: {final.Status} {final.Detail}");
            }
        }

        throw new SeedFailedException(UnfinishedSpends);
    }

    /// <summary>Seeds a running freeside through its admin routes; <paramref name="operatorToken"/> mints a fresh operator token per call.</summary>
    public static async Task<IReadOnlyList<string>> SeedOverHttpAsync(HttpClient client, Func<string> operatorToken, CancellationToken ct = default)
    {
        var created = DateTimeOffset.UtcNow;
        await SendAsync(client, operatorToken, HttpMethod.Put, $"api/v1/admin/communities/{CommunityId}", new { name = CommunityName, tier = "free", monthlyBudgetCents = BudgetCents }, ct);
        await SendAsync(client, operatorToken, HttpMethod.Put, $"api/v1/admin/tenant-aliases/{TenantAlias}", new { communityId = CommunityId }, ct);
        await SendAsync(client, operatorToken, HttpMethod.Put, $"api/v1/admin/agents/{AgentId}",
            new { communityId = CommunityId, name = "Staging Test Agent", nftContract = NftContract, nftTokenId = NftTokenId, createdAt = created }, ct);
        await SendAsync(client, operatorToken, HttpMethod.Put, $"api/v1/admin/agents/{AgentIdB}",
            new { communityId = CommunityId, name = "Staging Test Agent B (Warming)", nftContract = NftContractB, nftTokenId = NftTokenId, createdAt = created.AddDays(-7) }, ct);
        await SendAsync(client, operatorToken, HttpMethod.Post, $"api/v1/admin/communities/{CommunityId}/credits",
            new { lotId = CreditLotId, amountMicro = LotCents * 10_000, source = "seed" }, ct);
        foreach (var spendId in SpendAttemptIds)
        {
            var error = await SendAsync(client, operatorToken, HttpMethod.Post, $"api/v1/admin/communities/{CommunityId}/spend",
                new { reservationId = spendId, amountMicro = SpentCents * 10_000, agentId = AgentId, pool = "cheap", model = "seed" }, ct,
                unfinished: ["RESERVATION_EXPIRED", "RESERVATION_ALREADYRELEASED"]);
            if (error is null)
            {
                return OutputLines;
            }
        }

        throw new SeedFailedException(UnfinishedSpends);
    }

    /// <summary>Sends one operator call; null when it succeeded, or the error code when it is one of <paramref name="unfinished"/>.</summary>
    static async Task<string?> SendAsync(HttpClient client, Func<string> token, HttpMethod method, string path, object body, CancellationToken ct, string[]? unfinished = null)
    {
        using var request = new HttpRequestMessage(method, path) { Content = JsonContent.Create(body) };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token());
        using var response = await client.SendAsync(request, ct);
        if (response.IsSuccessStatusCode)
        {
            return null;
        }

        var text = await response.Content.ReadAsStringAsync(ct);
        if (unfinished is not null && response.StatusCode == System.Net.HttpStatusCode.Conflict && ErrorCode(text) is { } code && unfinished.Contains(code))
        {
            return code;
        }

        throw new SeedFailedException($"{method} {path} answered {(int)response.StatusCode}: {text}");
    }

    static string? ErrorCode(string json)
    {
        try
        {
            using var doc = System.Text.Json.JsonDocument.Parse(json);
            return doc.RootElement.ValueKind == System.Text.Json.JsonValueKind.Object && doc.RootElement.TryGetProperty("error", out var e) && e.ValueKind == System.Text.Json.JsonValueKind.String
                ? e.GetString()
                : null;
        }
        catch (System.Text.Json.JsonException)
        {
            return null;
        }
    }

    static void Check(CommunityResult result, string what)
    {
        if (result.Status is not (CommunityStatus.Created or CommunityStatus.Updated))
        {
            throw new SeedFailedException(result.Status == CommunityStatus.BudgetBelowUsage
                ? $"Seeding the {what} failed: {CommunityId} has already spent or reserved more than the seed's budget of {BudgetCents} cents this month, " +
                  "and a budget cannot be set below that; run the gate against it as it is, or seed again next month."
                : $"Seeding the {what} failed: {result.Status} {result.Detail}");
        }
    }
}
