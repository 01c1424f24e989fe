using System.Data.Common;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Arrakis.Shared.Storage;
using Dapper;

namespace Arrakis.Dixie.Reputation;

/// <summary>A validated quality event, its score already in [0, 1].</summary>
public sealed record ReputationEvent(
    string EventId, string RoutingKey, double Score, string Source, string? Model, string? Pool, string? TraceId, long OccurredAtMs)
{
    /// <summary>sha256 of the canonical payload: what decides "same event id, same payload".</summary>
    public string PayloadHash()
    {
        var canonical = string.Join('\n', RoutingKey, Score.ToString("R", CultureInfo.InvariantCulture), Source, Model ?? "", Pool ?? "", TraceId ?? "",
            OccurredAtMs.ToString(CultureInfo.InvariantCulture));
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(canonical)));
    }
}

public enum RecordOutcome
{
    Accepted,
    Replayed,
    Conflict,
}

/// <summary>The answer for an event: the JSON body stored with the first delivery, replayed verbatim for duplicates.</summary>
public sealed record RecordResult(RecordOutcome Outcome, string Body);

/// <summary>One stored score: <c>model</c> is empty for the agent's overall score.</summary>
public sealed record StoredScore(string Model, BetaEvidence Evidence);

/// <summary>Event log and decayed Beta scores. An event and its score updates commit in one transaction.</summary>
public sealed class ReputationStore(Database database, ReputationOptions options)
{
    public const string AgentModel = "";

    readonly ReputationMath _agentMath = options.AgentMath();
    readonly ReputationMath _modelMath = options.ModelMath();

    public ReputationMath AgentMath => _agentMath;

    public ReputationMath ModelMath => _modelMath;

    sealed record ScoreRow(string model, double alpha, double beta, long event_count, long updated_at);

    sealed record EventRow(string payload_hash, string result);

    /// <summary>
    /// Records an event once. The event_id primary key is the idempotency guard: a concurrent duplicate fails its
    /// insert (after the first commits) and is answered from the stored row, so N identical sends make one update.
    /// Runs, retries included, within the request-path timeout (<see cref="Database.WithinRequestTimeoutAsync{T}"/>): a
    /// database that stops answering fails the call as 503 within seconds. An event that commits after that is answered
    /// as a replay when the caller retries it with the same event id; <paramref name="abandoned"/> gets the recording once it
    /// has ended when the caller stopped waiting for it (see <see cref="Database.WithinRequestTimeoutAsync{T}(Func{CancellationToken, Task{T}}, Action{Task{T}}, CancellationToken)"/>).
    /// </summary>
    public Task<RecordResult> RecordAsync(ReputationEvent ev, long nowMs, Func<ReputationEvent, StoredScore, StoredScore?, string> resultBody,
        Action<Task<RecordResult>>? abandoned, CancellationToken ct) =>
        database.WithinRequestTimeoutAsync(t => RecordCoreAsync(ev, nowMs, resultBody, t), abandoned, ct);

    public Task<RecordResult> RecordAsync(ReputationEvent ev, long nowMs, Func<ReputationEvent, StoredScore, StoredScore?, string> resultBody, CancellationToken ct) =>
        RecordAsync(ev, nowMs, resultBody, null, ct);

    async Task<RecordResult> RecordCoreAsync(ReputationEvent ev, long nowMs, Func<ReputationEvent, StoredScore, StoredScore?, string> resultBody, CancellationToken ct)
    {
        var hash = ev.PayloadHash();
        for (var attempt = 0; ; attempt++)
        {
            await using var connection = await database.OpenAsync(ct);
            try
            {
                await using var tx = await Database.BeginWriteAsync(connection, ct);
                await connection.ExecuteAsync(new CommandDefinition(
                    """
                    INSERT INTO reputation_events (event_id, routing_key, payload_hash, score, source, model, pool, trace_id, occurred_at, received_at, result)
                    VALUES (@EventId, @RoutingKey, @hash, @Score, @Source, @Model, @Pool, @TraceId, @OccurredAtMs, @nowMs, '')
                    """,
                    new { ev.EventId, ev.RoutingKey, hash, ev.Score, ev.Source, ev.Model, ev.Pool, ev.TraceId, ev.OccurredAtMs, nowMs }, tx, cancellationToken: ct));

                var agent = await UpdateScoreAsync(connection, tx, ev.RoutingKey, AgentModel, _agentMath, ev, nowMs, ct);
                var model = ev.Model is { Length: > 0 } m ? await UpdateScoreAsync(connection, tx, ev.RoutingKey, m, _modelMath, ev, nowMs, ct) : null;
                var body = resultBody(ev, agent, model);
                await connection.ExecuteAsync(new CommandDefinition(
                    "UPDATE reputation_events SET result = @body WHERE event_id = @EventId", new { body, ev.EventId }, tx, cancellationToken: ct));
                await tx.CommitAsync(ct);
                return new RecordResult(RecordOutcome.Accepted, body);
            }
            catch (DbException ex) when (Database.IsUniqueViolation(ex))
            {
                // Fall through to read the winner's row outside the failed transaction (rolled back by now), on the same
                // connection: a second one while holding this one lets concurrent duplicates take the whole pool and
                // wait for each other until the pool's timeout (a 503 for every one of them).
            }
            catch (DbException ex) when (Database.IsTransient(ex) && attempt < 5)
            {
                await Task.Delay(10 * (attempt + 1), ct);
                continue;
            }

            var existing = await connection.QuerySingleOrDefaultAsync<EventRow>(new CommandDefinition(
                "SELECT payload_hash, result FROM reputation_events WHERE event_id = @EventId", new { ev.EventId }, cancellationToken: ct));
            if (existing is null)
            {
                continue;
            }

            return existing.payload_hash == hash
                ? new RecordResult(RecordOutcome.Replayed, existing.result)
                : new RecordResult(RecordOutcome.Conflict, existing.result);
        }
    }

    async Task<StoredScore> UpdateScoreAsync(DbConnection connection, DbTransaction tx, string key, string model, ReputationMath math, ReputationEvent ev, long nowMs, CancellationToken ct)
    {
        var created = await connection.ExecuteAsync(new CommandDefinition(
            """
            INSERT INTO reputation_scores (routing_key, model, alpha, beta, event_count, created_at, updated_at)
            VALUES (@key, @model, 0, 0, 0, @nowMs, @nowMs)
            ON CONFLICT (routing_key, model) DO NOTHING
            """,
            new { key, model, nowMs }, tx, cancellationToken: ct));
        if (created == 1 && model == AgentModel)
        {
            // A new agent: counted in the same transaction, so the count is exact (see dixie.020_agent_count.sql).
            await connection.ExecuteAsync(new CommandDefinition(
                "UPDATE reputation_counters SET value = value + 1 WHERE name = 'agents'", transaction: tx, cancellationToken: ct));
        }
        var row = await connection.QuerySingleAsync<ScoreRow>(new CommandDefinition(
            "SELECT model, alpha, beta, event_count, updated_at FROM reputation_scores WHERE routing_key = @key AND model = @model"
                + (database.IsPostgres ? " FOR UPDATE" : ""),
            new { key, model }, tx, cancellationToken: ct));
        var next = math.Apply(ToEvidence(row), ev.Score, nowMs, ev.OccurredAtMs);
        await connection.ExecuteAsync(new CommandDefinition(
            "UPDATE reputation_scores SET alpha = @Alpha, beta = @Beta, event_count = @Count, updated_at = @UpdatedAtMs WHERE routing_key = @key AND model = @model",
            new { next.Alpha, next.Beta, next.Count, next.UpdatedAtMs, key, model }, tx, cancellationToken: ct));
        return new StoredScore(model, next);
    }

    /// <summary>
    /// All scores of one agent (overall first, then models by name); empty when the agent is unknown. Within the
    /// request-path timeout (<see cref="Database.WithinRequestTimeoutAsync{T}"/>).
    /// </summary>
    public Task<IReadOnlyList<StoredScore>> ScoresAsync(string routingKey, CancellationToken ct) =>
        database.WithinRequestTimeoutAsync<IReadOnlyList<StoredScore>>(async t =>
        {
            await using var connection = await database.OpenAsync(t);
            var rows = await connection.QueryAsync<ScoreRow>(new CommandDefinition(
                "SELECT model, alpha, beta, event_count, updated_at FROM reputation_scores WHERE routing_key = @routingKey ORDER BY model",
                new { routingKey }, cancellationToken: t));
            return rows.Select(r => new StoredScore(r.model, ToEvidence(r))).ToList();
        }, ct);

    /// <summary>
    /// Sets the kept agent count from the score rows, once at start-up: replicas of a build before the count (during a
    /// rolling upgrade) create agents without counting them. The counter row is locked before the count is read, so an
    /// agent another replica creates meanwhile is either in the count or adds itself after it.
    /// </summary>
    public async Task<long> RecountAgentsAsync(CancellationToken ct)
    {
        await using var connection = await database.OpenAsync(ct);
        await using var tx = await Database.BeginWriteAsync(connection, ct);
        if (database.IsPostgres)
        {
            await connection.ExecuteAsync(new CommandDefinition(
                "SELECT value FROM reputation_counters WHERE name = 'agents' FOR UPDATE", transaction: tx, cancellationToken: ct));
        }

        var agents = await connection.ExecuteScalarAsync<long>(new CommandDefinition(
            "SELECT COUNT(*) FROM reputation_scores WHERE model = ''", transaction: tx, cancellationToken: ct));
        await connection.ExecuteAsync(new CommandDefinition(
            "UPDATE reputation_counters SET value = @agents WHERE name = 'agents'", new { agents }, tx, cancellationToken: ct));
        await tx.CommitAsync(ct);
        return agents;
    }

    /// <summary>The number of agents with a score: one row, kept by <see cref="RecordAsync"/> as agents are first scored.</summary>
    public async Task<long> AgentCountAsync(CancellationToken ct)
    {
        await using var connection = await database.OpenAsync(ct);
        return await connection.ExecuteScalarAsync<long>(new CommandDefinition(
            "SELECT value FROM reputation_counters WHERE name = 'agents'", cancellationToken: ct));
    }

    static BetaEvidence ToEvidence(ScoreRow r) => new(r.alpha, r.beta, r.event_count, r.updated_at);
}
