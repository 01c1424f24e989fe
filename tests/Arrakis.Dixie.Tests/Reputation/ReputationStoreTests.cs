using Arrakis.Dixie.Reputation;
using Arrakis.Shared.Storage;
using Dapper;

namespace Arrakis.Dixie.Tests.Reputation;

public sealed class ReputationStoreTests
{
    const long Now = 1_800_000_000_000;

    static async Task<(ReputationStore Store, Database Db)> NewStoreAsync(string engine)
    {
        var db = new Database(TestStorage.Options(engine, "dixie"));
        await new Migrator(db).ApplyAsync(Migrator.FromAssembly(typeof(ReputationStore).Assembly, db.Engine));
        return (new ReputationStore(db, new ReputationOptions()), db);
    }

    static ReputationEvent Event(string id, double score = 0.75, string? model = "local-mini-a", string key = "nft:store") =>
        new(id, key, score, "test", model, "cheap", null, Now);

    static string Body(ReputationEvent e, StoredScore agent, StoredScore? model) =>
        $"{{\"event_id\":\"{e.EventId}\",\"count\":{agent.Evidence.Count}}}";

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task First_event_creates_the_agent_and_its_model_score(string engine)
    {
        var (store, db) = await NewStoreAsync(engine);
        await using var _ = db;
        var ct = TestContext.Current.CancellationToken;
        Assert.Empty(await store.ScoresAsync("nft:store", ct));

        var result = await store.RecordAsync(Event("e-1"), Now, Body, ct);

        Assert.Equal(RecordOutcome.Accepted, result.Outcome);
        var scores = await store.ScoresAsync("nft:store", ct);
        Assert.Equal(["", "local-mini-a"], scores.Select(s => s.Model));
        Assert.All(scores, s => Assert.Equal(new BetaEvidence(0.75, 0.25, 1, Now), s.Evidence));
        Assert.Equal(1, await store.AgentCountAsync(ct));
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Replay_returns_the_first_result_and_a_changed_payload_conflicts(string engine)
    {
        var (store, db) = await NewStoreAsync(engine);
        await using var _ = db;
        var ct = TestContext.Current.CancellationToken;

        var first = await store.RecordAsync(Event("e-1"), Now, Body, ct);
        var replay = await store.RecordAsync(Event("e-1"), Now + 5_000, Body, ct);
        var conflict = await store.RecordAsync(Event("e-1", score: 0.0), Now + 6_000, Body, ct);

        Assert.Equal(RecordOutcome.Replayed, replay.Outcome);
        Assert.Equal(first.Body, replay.Body);
        Assert.Equal(RecordOutcome.Conflict, conflict.Outcome);
        var agent = (await store.ScoresAsync("nft:store", ct)).Single(s => s.Model == "");
        Assert.Equal(1, agent.Evidence.Count);
        Assert.Equal(0.75, agent.Evidence.Alpha, 12);
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task The_same_event_id_sent_32_times_concurrently_updates_once(string engine)
    {
        var (store, db) = await NewStoreAsync(engine);
        await using var _ = db;
        var ct = TestContext.Current.CancellationToken;

        var results = await Task.WhenAll(Enumerable.Range(0, 32).Select(_ => Task.Run(() => store.RecordAsync(Event("same"), Now, Body, ct), ct)));

        Assert.Single(results, r => r.Outcome == RecordOutcome.Accepted);
        Assert.Equal(31, results.Count(r => r.Outcome == RecordOutcome.Replayed));
        Assert.All(results, r => Assert.Equal(results[0].Body, r.Body));
        var scores = await store.ScoresAsync("nft:store", ct);
        Assert.All(scores, s => Assert.Equal(1, s.Evidence.Count));
        await using var connection = await db.OpenAsync(ct);
        Assert.Equal(1, await connection.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM reputation_events"));
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Concurrent_distinct_events_for_one_agent_lose_no_update(string engine)
    {
        var (store, db) = await NewStoreAsync(engine);
        await using var _ = db;
        var ct = TestContext.Current.CancellationToken;

        await Task.WhenAll(Enumerable.Range(0, 24).Select(i => Task.Run(() => store.RecordAsync(Event("d-" + i, score: 1.0), Now, Body, ct), ct)));

        var agent = (await store.ScoresAsync("nft:store", ct)).Single(s => s.Model == "");
        Assert.Equal(24, agent.Evidence.Count);
        Assert.Equal(24, agent.Evidence.Alpha, 9);
        var model = (await store.ScoresAsync("nft:store", ct)).Single(s => s.Model == "local-mini-a");
        Assert.Equal(12, model.Evidence.Alpha, 9); // the default model evidence window
    }
}
