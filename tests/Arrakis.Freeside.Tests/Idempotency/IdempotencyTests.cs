using System.Text.Json;
using Arrakis.Freeside.Idempotency;
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
        var results = await Task.WhenAll(Enumerable.Range(0, 16).Select(_ => Task.Run(() => store.BeginAsync("c1", "k1", "h1"))));
        Assert.Equal(1, results.Count(r => r.State == IdempotencyState.Started));
        Assert.Equal(15, results.Count(r => r.State == IdempotencyState.InProgress));
        Assert.Equal(IdempotencyState.KeyReused, (await store.BeginAsync("c1", "k1", "h2")).State);
        Assert.Equal(IdempotencyState.Started, (await store.BeginAsync("c2", "k1", "h2")).State); // scoped per community

        await store.CompleteAsync("c1", "k1", 201, "{\"ok\":true}", "application/json");
        var replay = await store.BeginAsync("c1", "k1", "h1");
        Assert.Equal((IdempotencyState.Replay, 201, "{\"ok\":true}"), (replay.State, replay.Status, replay.Body));

        Assert.Equal(IdempotencyState.Started, (await store.BeginAsync("c1", "k2", "h1")).State);
        await store.AbandonAsync("c1", "k2");
        Assert.Equal(IdempotencyState.Started, (await store.BeginAsync("c1", "k2", "h1")).State);

        w.Time.Advance(TimeSpan.FromHours(26));
        Assert.Equal(3, await store.PurgeAsync()); // k1 (c1), k1 (c2) and k2 are all past retention
        Assert.Equal(IdempotencyState.Started, (await store.BeginAsync("c1", "k1", "h9")).State);
    }

    [Fact]
    public void Key_resolver_prefers_header_then_camel_then_snake_and_limits_length()
    {
        static (IdempotencyKey?, IResult?) Resolve(string? header, string json)
        {
            var http = new DefaultHttpContext();
            if (header is not null)
            {
                http.Request.Headers[IdempotencyKeys.Header] = header;
            }

            return IdempotencyKeys.Resolve(http.Request, JsonDocument.Parse(json).RootElement);
        }

        Assert.Equal(new IdempotencyKey("h", IdempotencyKeySource.Header), Resolve("h", """{"idempotencyKey":"c","idempotency_key":"s"}""").Item1);
        Assert.Equal(new IdempotencyKey("c", IdempotencyKeySource.BodyCamel), Resolve(null, """{"idempotencyKey":"c","idempotency_key":"s"}""").Item1);
        Assert.Equal(new IdempotencyKey("chaos-smoke-dup-001", IdempotencyKeySource.BodySnake), Resolve(null, """{"idempotency_key":"chaos-smoke-dup-001"}""").Item1);
        Assert.Equal(IdempotencyKeySource.Generated, Resolve(null, "{}").Item1!.Source);
        Assert.Null(Resolve(new string('x', 256), "{}").Item1);
        Assert.NotNull(Resolve(new string('x', 256), "{}").Item2);
        Assert.NotNull(Resolve(null, """{"idempotency_key":"" }""").Item2);
        Assert.NotNull(Resolve(new string('x', 255), "{}").Item1);
    }
}
