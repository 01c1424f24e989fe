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

    /// <summary>
    /// One page of a community's usage in a month, newest first: the records strictly before <paramref name="before"/>
    /// (created_at, id) when given. Keyset paging, so a page costs the same however deep it is and records written
    /// meanwhile neither repeat nor shift the pages after it.
    /// </summary>
    public async Task<IReadOnlyList<UsageEntry>> PageAsync(string communityId, string month, int limit, (long CreatedAt, string Id)? before, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        var after = before is { } b ? "AND (created_at < @at OR (created_at = @at AND id < @id))" : "";
        return (await c.QueryAsync<UsageEntry>(
            $"SELECT {Columns} FROM usage_records WHERE community_id = @communityId AND month = @month {after} ORDER BY created_at DESC, id DESC LIMIT @limit",
            new { communityId, month, limit, at = before?.CreatedAt ?? 0, id = before?.Id ?? "" })).ToList();
    }

    /// <summary>A community's usage in a month summed per <paramref name="dimension"/> (pool, model or agent_id), dearest first.</summary>
    public async Task<IReadOnlyList<UsageTotal>> TotalsAsync(string communityId, string month, UsageDimension dimension, CancellationToken ct = default)
    {
        var column = dimension switch
        {
            UsageDimension.Pool => "pool",
            UsageDimension.Model => "model",
            UsageDimension.Agent => "agent_id",
            _ => throw new ArgumentOutOfRangeException(nameof(dimension)),
        };
        // PostgreSQL sums BIGINTs into NUMERIC; the casts keep every engine's answer a 64-bit integer.
        var sql = $"""
            SELECT {column} AS Key, COUNT(*) AS Invocations, CAST(SUM(cost_micro) AS BIGINT) AS CostMicro,
                CAST(SUM(prompt_tokens) AS BIGINT) AS PromptTokens, CAST(SUM(completion_tokens) AS BIGINT) AS CompletionTokens
            FROM usage_records WHERE community_id = @communityId AND month = @month
            GROUP BY {column} ORDER BY CostMicro DESC, {column}
            """;
        await using var c = await db.OpenAsync(ct);
        return (await c.QueryAsync<TotalRow>(sql, new { communityId, month }))
            .Select(r => new UsageTotal(r.Key, r.Invocations, r.CostMicro, r.PromptTokens, r.CompletionTokens)).ToList();
    }

    /// <summary>
    /// Settable, so Dapper maps it by name: SQLite types an expression column by its value, and with no rows at all it
    /// reports byte[] for every sum, which no constructor of <see cref="UsageTotal"/> matches.
    /// </summary>
    sealed class TotalRow
    {
        public string? Key { get; set; }

        public long Invocations { get; set; }

        public long CostMicro { get; set; }

        public long PromptTokens { get; set; }

        public long CompletionTokens { get; set; }
    }

    public async Task<IReadOnlyList<UsageEntry>> ForCommunityMonthAsync(string communityId, string month, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return (await c.QueryAsync<UsageEntry>(
            $"SELECT {Columns} FROM usage_records WHERE community_id = @communityId AND month = @month ORDER BY created_at, id", new { communityId, month })).ToList();
    }
}

/// <summary>What usage is summed by.</summary>
public enum UsageDimension
{
    Pool,
    Model,
    Agent,
}

/// <summary>Usage summed over one key of a <see cref="UsageDimension"/> (null key: records without one).</summary>
public sealed record UsageTotal(string? Key, long Invocations, long CostMicro, long PromptTokens, long CompletionTokens);
