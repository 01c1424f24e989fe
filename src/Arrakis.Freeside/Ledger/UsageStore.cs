using Arrakis.Shared.Storage;
using Dapper;

namespace Arrakis.Freeside.Ledger;

/// <summary>Reads the usage records the ledger writes at finalize.</summary>
public sealed class UsageStore(Database db)
{
    const string Columns = "id AS Id, community_id AS CommunityId, month AS Month, agent_id AS AgentId, pool AS Pool, model AS Model, prompt_tokens AS PromptTokens, " +
        "completion_tokens AS CompletionTokens, cost_micro AS CostMicro, trace_id AS TraceId, idempotency_key AS IdempotencyKey, created_at AS CreatedAt";

    /// <summary>The usage of the trace, within one community when <paramref name="communityId"/> is given, or null.</summary>
    public async Task<UsageEntry?> FindByTraceAsync(string traceId, string? communityId = null, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return await c.QueryFirstOrDefaultAsync<UsageEntry>(
            $"SELECT {Columns} FROM usage_records WHERE trace_id = @traceId {(communityId is null ? "" : "AND community_id = @communityId")} ORDER BY created_at DESC, id LIMIT 1",
            new { traceId, communityId });
    }

    /// <summary>The agent's most recent usage (its pool and model), within one community when given, or null.</summary>
    public async Task<UsageEntry?> LatestForAgentAsync(string agentId, string? communityId = null, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return await c.QueryFirstOrDefaultAsync<UsageEntry>(
            $"SELECT {Columns} FROM usage_records WHERE agent_id = @agentId {(communityId is null ? "" : "AND community_id = @communityId")} ORDER BY created_at DESC, id DESC LIMIT 1",
            new { agentId, communityId });
    }

    public async Task<IReadOnlyList<UsageEntry>> ForCommunityMonthAsync(string communityId, string month, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return (await c.QueryAsync<UsageEntry>(
            $"SELECT {Columns} FROM usage_records WHERE community_id = @communityId AND month = @month ORDER BY created_at, id", new { communityId, month })).ToList();
    }
}
