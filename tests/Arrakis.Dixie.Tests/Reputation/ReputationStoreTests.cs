using System.Diagnostics;
using Arrakis.Dixie.Reputation;
using Arrakis.Shared.Storage;
using Dapper;
using Npgsql;

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

    /// <summary>
    /// Duplicates sent at once (freeside retrying a delivery that timed out while the first is still in flight) on a pool
    /// as small as a deployed replica's (5): each duplicate read the stored answer on a second connection while holding
    /// its first, so duplicates holding every pooled connection waited for each other until the pool's timeout and then
    /// failed (503 for each). They are answered from the connection they hold.
    /// </summary>
    [Fact]
    public async Task Concurrent_duplicates_on_a_small_pool_are_replayed_without_waiting_for_a_second_connection()
    {
        var ct = TestContext.Current.CancellationToken;
        var config = TestStorage.FreshConfig("postgres", "dixie");
        config["ConnectionStrings:Dixie"] = new NpgsqlConnectionStringBuilder(config["ConnectionStrings:Dixie"]) { MaxPoolSize = 2, Timeout = 5 }.ConnectionString;
        var db = new Database(StorageOptions.Resolve(new ConfigurationBuilder().AddInMemoryCollection(config).Build(), "dixie"));
        await using var _ = db;
        await new Migrator(db).ApplyAsync(Migrator.FromAssembly(typeof(ReputationStore).Assembly, db.Engine), ct);
        var store = new ReputationStore(db, new ReputationOptions());

        var sw = Stopwatch.StartNew();
        var results = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(() => store.RecordAsync(Event("dup"), Now, Body, ct), ct)));
        var replays = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(() => store.RecordAsync(Event("dup"), Now, Body, ct), ct)));

        Assert.Equal([1, 7, 8], new[] { results.Count(r => r.Outcome == RecordOutcome.Accepted), results.Count(r => r.Outcome == RecordOutcome.Replayed), replays.Count(r => r.Outcome == RecordOutcome.Replayed) });
        Assert.All(results.Concat(replays), r => Assert.Equal(results[0].Body, r.Body));
        Assert.All(await store.ScoresAsync("nft:store", ct), s => Assert.Equal(1, s.Evidence.Count));
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), $"16 duplicates took {sw.ElapsedMilliseconds} ms on a pool of 2");
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

    /// <summary>
    /// A rating that waited out a dixie outage in freeside's outbox (or any event that arrives late or out of order)
    /// decays from its own timestamp, not from when dixie received it: two weeks late, it counts a quarter.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task An_event_delivered_late_decays_from_its_own_timestamp(string engine)
    {
        var (store, db) = await NewStoreAsync(engine);
        await using var _ = db;
        var ct = TestContext.Current.CancellationToken;
        var fortnight = (long)TimeSpan.FromDays(14).TotalMilliseconds;

        // The bad rating (made now) arrives first; the excellent one, made two weeks ago, arrives after it.
        await store.RecordAsync(Event("now-bad", score: 0.0) with { OccurredAtMs = Now + fortnight }, Now + fortnight, Body, ct);
        await store.RecordAsync(Event("old-excellent", score: 1.0), Now + fortnight, Body, ct);

        var scores = await store.ScoresAsync("nft:store", ct);
        Assert.All(scores, s =>
        {
            Assert.Equal(0.25, s.Evidence.Alpha, 9);
            Assert.Equal(1.0, s.Evidence.Beta, 9);
            Assert.Equal(2, s.Evidence.Count);
        });
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task The_agent_count_counts_each_new_agent_once_under_concurrent_events(string engine)
    {
        var (store, db) = await NewStoreAsync(engine);
        await using var _ = db;
        var ct = TestContext.Current.CancellationToken;

        // 12 agents, 4 events each (with and without a model), all at once: every agent's first events race to create it.
        await Task.WhenAll(Enumerable.Range(0, 48).Select(i => Task.Run(
            () => store.RecordAsync(Event("c-" + i, model: i % 2 == 0 ? "local-mini-a" : null, key: "nft:agent-" + (i % 12)), Now, Body, ct), ct)));
        await store.RecordAsync(Event("c-again", key: "nft:agent-0"), Now, Body, ct);

        Assert.Equal(12, await store.AgentCountAsync(ct));
        await using var connection = await db.OpenAsync(ct);
        Assert.Equal(12, await connection.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM reputation_scores WHERE model = ''"));
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task The_agent_count_starts_from_the_agents_scored_before_it_existed(string engine)
    {
        var db = new Database(TestStorage.Options(engine, "dixie"));
        await using var _ = db;
        var ct = TestContext.Current.CancellationToken;
        var migrations = Migrator.FromAssembly(typeof(ReputationStore).Assembly, db.Engine);
        var counter = migrations.Single(m => m.Id == "dixie.020_agent_count");
        await new Migrator(db).ApplyAsync(migrations.Where(m => string.CompareOrdinal(m.Id, counter.Id) < 0), ct);
        var before = new ReputationStore(db, new ReputationOptions());
        // Scored before the upgrade (the old store wrote no count): 3 agents, one of them with a model row too.
        await using (var connection = await db.OpenAsync(ct))
        {
            foreach (var (key, model) in new[] { ("nft:old-1", ""), ("nft:old-1", "local-mini-a"), ("nft:old-2", ""), ("nft:old-3", "") })
            {
                await connection.ExecuteAsync(
                    "INSERT INTO reputation_scores (routing_key, model, alpha, beta, event_count, created_at, updated_at) VALUES (@key, @model, 1, 0, 1, @Now, @Now)",
                    new { key, model, Now });
            }
        }

        Assert.Equal(["dixie.020_agent_count"], await new Migrator(db).ApplyAsync(migrations, ct));
        Assert.Equal(3, await before.AgentCountAsync(ct));
        await before.RecordAsync(Event("n-1", key: "nft:old-2"), Now, Body, ct);
        await before.RecordAsync(Event("n-2", key: "nft:new-1"), Now, Body, ct);
        Assert.Equal(4, await before.AgentCountAsync(ct));
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_recount_picks_up_agents_an_older_replica_created_without_counting(string engine)
    {
        var (store, db) = await NewStoreAsync(engine);
        await using var _ = db;
        var ct = TestContext.Current.CancellationToken;
        await store.RecordAsync(Event("r-1", key: "nft:counted"), Now, Body, ct);
        await using (var connection = await db.OpenAsync(ct))
        {
            // What a replica of the build before the count does: the agent's row, no count.
            await connection.ExecuteAsync(
                "INSERT INTO reputation_scores (routing_key, model, alpha, beta, event_count, created_at, updated_at) VALUES ('nft:uncounted', '', 1, 0, 1, @Now, @Now)",
                new { Now });
        }

        Assert.Equal(1, await store.AgentCountAsync(ct));
        Assert.Equal(2, await store.RecountAgentsAsync(ct));
        Assert.Equal(2, await store.AgentCountAsync(ct));
        await store.RecordAsync(Event("r-2", key: "nft:after"), Now, Body, ct);
        Assert.Equal(3, await store.AgentCountAsync(ct));
    }
}
