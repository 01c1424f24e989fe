using System.Text.Json;
using Arrakis.Freeside.Idempotency;
using Arrakis.Freeside.Ledger;
using Arrakis.Freeside.Tests.Ledger;
using Microsoft.AspNetCore.Http;

namespace Arrakis.Freeside.Tests.Idempotency;

public sealed class IdempotencyTests
{
    public static TheoryData<string> Engines => TestStorage.Engines();

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Same_key_replays_different_body_conflicts_and_running_key_is_in_progress(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        var store = w.Idempotency;
        var results = await Task.WhenAll(Enumerable.Range(0, 16).Select(i => Task.Run(() => store.BeginAsync("c1", "k1", "h1", "o" + i))));
        Assert.Equal(1, results.Count(r => r.State == IdempotencyState.Started));
        Assert.Equal(15, results.Count(r => r.State == IdempotencyState.InProgress));
        Assert.Equal(IdempotencyState.KeyReused, (await store.BeginAsync("c1", "k1", "h2", "o16")).State);
        Assert.Equal(IdempotencyState.Started, (await store.BeginAsync("c2", "k1", "h2", "o17")).State); // scoped per community

        var winner = "o" + Array.FindIndex(results, r => r.State == IdempotencyState.Started);
        await store.CompleteAsync("c1", "k1", "o15" == winner ? "o0" : "o15", 500, "{}", "application/json"); // not its owner: no effect
        Assert.Equal(IdempotencyState.InProgress, (await store.BeginAsync("c1", "k1", "h1", "o18")).State);
        await store.CompleteAsync("c1", "k1", winner, 201, "{\"ok\":true}", "application/json");
        var replay = await store.BeginAsync("c1", "k1", "h1", "o19");
        Assert.Equal((IdempotencyState.Replay, 201, "{\"ok\":true}"), (replay.State, replay.Status, replay.Body));

        Assert.Equal(IdempotencyState.Started, (await store.BeginAsync("c1", "k2", "h1", "o20")).State);
        await store.AbandonAsync("c1", "k2", "o20");
        Assert.Equal(IdempotencyState.Started, (await store.BeginAsync("c1", "k2", "h1", "o21")).State);

        w.Time.Advance(TimeSpan.FromHours(26));
        Assert.Equal(3, await store.PurgeAsync()); // k1 (c1), k1 (c2) and k2 are all past retention
        Assert.Equal(IdempotencyState.Started, (await store.BeginAsync("c1", "k1", "h9", "o22")).State);
    }

    /// <summary>The purge deletes in batches until none is left past retention, and never a key inside it.</summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task A_purge_larger_than_one_batch_deletes_every_expired_key_and_keeps_the_rest(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        const int Expired = (2 * IdempotencyStore.PurgeBatch) + 500;
        var at = w.Time.GetUtcNow().ToUnixTimeMilliseconds();
        var keys = Enumerable.Range(0, Expired).Select(i => new { scope = "c" + (i % 3), key = "old-" + i, at });
        Assert.Equal(Expired, await w.ExecuteAsync(
            "INSERT INTO idempotency_keys (scope, idem_key, request_hash, state, response_status, response_body, content_type, created_at, updated_at) " +
            "VALUES (@scope, @key, 'h', 'complete', 200, '{}', 'application/json', @at, @at)", keys));
        w.Time.Advance(TimeSpan.FromHours(24));
        Assert.Equal(IdempotencyState.Started, (await w.Idempotency.BeginAsync("c1", "fresh", "h", "o1")).State); // 24 h younger
        await w.Idempotency.CompleteAsync("c1", "fresh", "o1", 200, "{\"n\":1}", "application/json");
        w.Time.Advance(TimeSpan.FromHours(2)); // the old keys are now 26 h old, past the 25 h retention; "fresh" is 2 h old

        Assert.Equal(Expired, await w.Idempotency.PurgeAsync());
        Assert.Equal(1, await w.ScalarAsync<long>("SELECT COUNT(*) FROM idempotency_keys"));
        var kept = await w.Idempotency.BeginAsync("c1", "fresh", "h", "o2");
        Assert.Equal((IdempotencyState.Replay, "{\"n\":1}"), (kept.State, kept.Body));
        Assert.Equal(0, await w.Idempotency.PurgeAsync());
    }

    /// <summary>
    /// A call stalls past its key's lease (a paused process, a database that went away and came back). While its hold is
    /// pending it may still charge, so a retry gets 409 instead of the key; once the hold is reaped the retry takes the key
    /// over, and the stalled call, when it wakes, can neither charge, nor free, complete or rewrite the new owner's claim.
    /// Before owners were recorded the retry took the key at once, and the stalled call's abandon freed the retry's claim
    /// for a third call: two charges for one key.
    /// </summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task A_call_that_lost_its_key_can_neither_charge_it_again_nor_free_or_overwrite_the_new_claim(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 1_000, creditMicro: 1_000_000_000);
        var store = w.Idempotency;
        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "res-a", 5_000, null, new LedgerKeyClaim("c1", "k", "h"))).Status);

        w.Time.Advance(store.LeaseTimeout + TimeSpan.FromMinutes(1)); // A's key lease lapsed, its hold (5 min TTL) not yet reaped
        Assert.Equal(IdempotencyState.InProgress, (await store.BeginAsync("c1", "k", "h", "res-b")).State);
        Assert.Equal(1, await w.Ledger.ExpireDueAsync());
        Assert.Equal(IdempotencyState.Started, (await store.BeginAsync("c1", "k", "h", "res-b")).State);
        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "res-b", 5_000)).Status);

        // A wakes up and carries on as the invoke path would.
        Assert.False(await store.RenewAsync("c1", "k", "res-a"));
        var late = await w.Ledger.FinalizeAsync("res-a", 4_000, new UsageRecord(), store.Completion("c1", "k", "res-a", 200, "{\"by\":\"a\"}", "application/json"));
        Assert.Equal(FinalizeStatus.Expired, late.Status);
        await store.ReplaceAsync("c1", "k", "res-a", 200, "{\"by\":\"a\",\"cost\":0}", "application/json");
        await store.AbandonAsync("c1", "k", "res-a");
        Assert.Equal(IdempotencyState.InProgress, (await store.BeginAsync("c1", "k", "h", "res-c")).State); // B's claim stands

        Assert.True(await store.RenewAsync("c1", "k", "res-b"));
        var done = await w.Ledger.FinalizeAsync("res-b", 4_000, new UsageRecord(), store.Completion("c1", "k", "res-b", 200, "{\"by\":\"b\"}", "application/json"));
        Assert.Equal(FinalizeStatus.Finalized, done.Status);
        await store.ReplaceAsync("c1", "k", "res-a", 200, "{\"by\":\"a\",\"cost\":0}", "application/json");
        var replay = await store.BeginAsync("c1", "k", "h", "res-d");
        Assert.Equal((IdempotencyState.Replay, "{\"by\":\"b\"}"), (replay.State, replay.Body));
        Assert.Equal(4_000, (await w.Budgets.GetAsync("c1"))!.CommittedMicro);
        Assert.Equal(1, await w.ScalarAsync<long>("SELECT COUNT(*) FROM usage_records"));
        await w.AssertConservedAsync();
    }

    /// <summary>
    /// A finalize freeside stopped waiting for (503 after Database__RequestTimeout, on PostgreSQL) that reaches the database
    /// after the call's release: the finalize posts nothing, and the answer it carries completed the key all the same.
    /// The abandon that follows a release frees only a key still in progress, so the retry the 503 invited replayed a
    /// 200 saying what it charged, with nothing charged: the answer for free and a receipt that is not true. Now the key
    /// stays the call's until that abandon frees it, and the retry runs.
    /// </summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task A_finalize_that_lands_after_its_release_neither_charges_nor_completes_the_key(string engine)
    {
        await using var w = await LedgerWorld.CreateAsync(engine);
        await w.CommunityAsync("c1", budgetCents: 1_000, creditMicro: 1_000_000_000);
        var store = w.Idempotency;
        Assert.Equal(ReserveStatus.Reserved, (await w.Ledger.ReserveAsync("c1", "res-a", 5_000, null, new LedgerKeyClaim("c1", "k", "h"))).Status);

        // The call gave up on its finalize and released its hold; then the finalize it had sent lands, before the abandon.
        Assert.Equal(ReleaseStatus.Released, (await w.Ledger.ReleaseAsync("res-a")).Status);
        var late = await w.Ledger.FinalizeAsync("res-a", 4_000, new UsageRecord(), store.Completion("c1", "k", "res-a", 200, "{\"cost_micro\":4000}", "application/json"));
        Assert.Equal(FinalizeStatus.AlreadyReleased, late.Status);
        Assert.True(await store.AbandonAsync("c1", "k", "res-a")); // the key was still in progress, the call's to free

        Assert.Equal(IdempotencyState.Started, (await store.BeginAsync("c1", "k", "h", "res-b")).State); // the retry runs
        Assert.Equal(0, (await w.Budgets.GetAsync("c1"))!.CommittedMicro);
        Assert.Equal(0, await w.ScalarAsync<long>("SELECT COUNT(*) FROM usage_records"));
        await w.AssertConservedAsync();
    }

    [Fact]
    public void Key_resolver_reads_header_or_body_refuses_two_different_keys_and_limits_length()
    {
        static (IdempotencyKey?, IResult?) Resolve(string[]? header, string json)
        {
            var http = new DefaultHttpContext();
            if (header is not null)
            {
                http.Request.Headers[IdempotencyKeys.Header] = header;
            }

            return IdempotencyKeys.Resolve(http.Request, JsonDocument.Parse(json).RootElement);
        }

        Assert.Equal(new IdempotencyKey("h", IdempotencyKeySource.Header), Resolve(["h"], "{}").Item1);
        Assert.Equal(new IdempotencyKey("c", IdempotencyKeySource.BodyCamel), Resolve(null, """{"idempotencyKey":"c"}""").Item1);
        Assert.Equal(new IdempotencyKey("k", IdempotencyKeySource.Header), Resolve(["k", "k"], """{"idempotencyKey":"k","idempotency_key":"k"}""").Item1);

        // Two different keys: which one the client meant is unknown, so neither is used (a retry could be charged again).
        foreach (var (header, json, field) in new (string[]?, string, string)[]
        {
            (["h"], """{"idempotencyKey":"c"}""", "idempotencyKey"),
            (null, """{"idempotencyKey":"c","idempotency_key":"s"}""", "idempotency_key"),
            (["a", "b"], "{}", IdempotencyKeys.Header),
        })
        {
            var (key, problem) = Resolve(header, json);
            Assert.Null(key);
            var refused = Assert.IsType<Microsoft.AspNetCore.Http.HttpResults.ProblemHttpResult>(problem);
            Assert.Equal(400, refused.StatusCode);
            Assert.Equal("INVALID_IDEMPOTENCY_KEY", refused.ProblemDetails.Extensions["error"]);
            Assert.Equal(field, refused.ProblemDetails.Extensions["field"]);
        }

        Assert.Equal(new IdempotencyKey("chaos-smoke-dup-001", IdempotencyKeySource.BodySnake), Resolve(null, """{"idempotency_key":"chaos-smoke-dup-001"}""").Item1);
        Assert.Equal(IdempotencyKeySource.Generated, Resolve(null, "{}").Item1!.Source);
        Assert.Null(Resolve([new string('x', 256)], "{}").Item1);
        Assert.NotNull(Resolve([new string('x', 256)], "{}").Item2);
        Assert.NotNull(Resolve(null, """{"idempotency_key":"" }""").Item2);
        Assert.NotNull(Resolve([new string('x', 255)], "{}").Item1);
    }
}
