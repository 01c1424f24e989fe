using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using Arrakis.Finn.Inference;
using Arrakis.Finn.Inference.Providers;
using Arrakis.Shared.Contracts;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;

namespace Arrakis.Finn.Tests.Inference;

/// <summary>The engine's per-attempt timer, on the simulated provider and a fake clock.</summary>
public sealed class InferenceEngineTests
{
    static ServiceProvider Services(FakeTimeProvider time, Dictionary<string, string?> settings)
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(settings).Build();
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddMetrics();
        services.AddSingleton<TimeProvider>(time);
        services.AddInference(configuration);
        return services.BuildServiceProvider();
    }

    static FinnInvokeRequest Request() =>
        new([new ChatMessage("user", "Explain autopoiesis in one sentence")], "cheap", 64, "nft:1", true, "t");

    /// <summary>
    /// Writing a delta to a slow client takes (fake) time far beyond the attempt timeout. That is the client's
    /// backpressure, not a silent provider: the timer pauses during the write, so the answer completes. Before, the timer
    /// kept running and the next chunk failed as PROVIDER_TIMEOUT.
    /// </summary>
    [Fact]
    public async Task A_slow_client_write_does_not_count_against_the_attempt_timeout()
    {
        var time = new FakeTimeProvider();
        await using var sp = Services(time, new() { ["Inference:AttemptTimeoutMs"] = "1000" });
        var engine = sp.GetRequiredService<InferenceEngine>();
        var request = Request();

        var deltas = new List<string>();
        var result = await engine.InvokeAsync(request, new PoolCatalog().Pools["cheap"], (delta, _) =>
        {
            deltas.Add(delta);
            time.Advance(TimeSpan.FromSeconds(5)); // the client reads this delta five attempt timeouts later
            return ValueTask.CompletedTask;
        }, TestContext.Current.CancellationToken);

        Assert.True(deltas.Count > 3, "several deltas were written slowly");
        Assert.Equal(result.Content, string.Concat(deltas));
        Assert.Equal(deltas.Count, result.Usage.CompletionTokens);
        Assert.Equal(BreakerState.Closed, sp.GetRequiredService<ModelBreakers>().StateOf(result.Model));
    }

    /// <summary>The timer pauses only for the write: a provider that then goes quiet for longer than the timeout still times out.</summary>
    [Fact]
    public async Task After_a_slow_write_the_attempt_timer_runs_again()
    {
        var time = new FakeTimeProvider();
        await using var sp = Services(time, new()
        {
            ["Inference:AttemptTimeoutMs"] = "1000",
            ["Providers:Local:TokenDelayMs"] = "2000",
        });
        var engine = sp.GetRequiredService<InferenceEngine>();
        var deltas = new List<string>();
        var invoke = engine.InvokeAsync(Request(), new PoolCatalog().Pools["cheap"], (delta, _) =>
        {
            deltas.Add(delta);
            time.Advance(TimeSpan.FromSeconds(5));
            return ValueTask.CompletedTask;
        }, TestContext.Current.CancellationToken);

        // The fake clock moves until the invoke ends: the 1 s timer, restarted after the write, fires before the 2 s token delay.
        while (!invoke.IsCompleted)
        {
            time.Advance(TimeSpan.FromMilliseconds(100));
            await Task.Delay(5, TestContext.Current.CancellationToken);
        }

        var ex = await Assert.ThrowsAsync<UpstreamException>(() => invoke);
        Assert.Equal(UpstreamFailure.Timeout, ex.Failure);
        Assert.Single(deltas);
        Assert.Equal(1, ex.PartialUsage?.CompletionTokens);
    }

    /// <summary>
    /// A failure that is not the provider's (here the write to the client throws) gives no verdict on the model, but a
    /// half-open probe must not stay in flight: before, the breaker never let another request through.
    /// </summary>
    [Fact]
    public async Task A_failed_client_write_releases_the_half_open_probe()
    {
        var time = new FakeTimeProvider();
        await using var sp = Services(time, []);
        var breakers = sp.GetRequiredService<ModelBreakers>();
        for (var i = 0; i < 3; i++)
        {
            breakers.RecordFailure("local-mini-a", probe: true);
        }

        time.Advance(TimeSpan.FromSeconds(40));
        Assert.Equal(BreakerState.HalfOpen, breakers.StateOf("local-mini-a"));

        var engine = sp.GetRequiredService<InferenceEngine>();
        var ex = await Assert.ThrowsAsync<IOException>(() => engine.InvokeAsync(Request(), new PoolCatalog().Pools["cheap"],
            (_, _) => throw new IOException("client connection reset"), TestContext.Current.CancellationToken));
        Assert.Equal("client connection reset", ex.Message);

        Assert.Equal(BreakerState.HalfOpen, breakers.StateOf("local-mini-a"));
        Assert.True(breakers.IsAvailable("local-mini-a"));
    }

    /// <summary>
    /// In half-open only the probe goes through, whatever a call that began before the breaker opened does meanwhile.
    /// Call X starts while the model is healthy; the breaker then opens (three failures elsewhere), half-opens, and P
    /// takes the probe. X now ends: its caller goes away, the vendor refuses X's request (a 400, no verdict on the
    /// model), or X fails. Before, each of these cleared the probe's slot, so a third call Q reached the model as a
    /// second probe while P was still in flight; now only P's own outcome frees it. And P's failure re-opens the
    /// breaker even when the open period X's failure started has elapsed meanwhile (before, it left the breaker
    /// half-open at once).
    /// </summary>
    [Theory]
    [InlineData("cancelled", "ok")]
    [InlineData("rejected", "ok")]
    [InlineData("failed", "ok")]
    [InlineData("cancelled", "fail")]
    [InlineData("failed", "fail")]
    public async Task A_call_from_before_the_breaker_opened_cannot_free_the_half_open_probe(string xEnds, string pEnds)
    {
        var time = new FakeTimeProvider();
        var held = new HeldProvider();
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Inference:MaxAttempts"] = "1",
            ["Inference:AttemptTimeoutMs"] = "600000",
        }).Build();
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddMetrics();
        services.AddSingleton<TimeProvider>(time);
        services.AddInference(configuration);
        services.AddSingleton<IInferenceProvider>(held);
        await using var sp = services.BuildServiceProvider();
        var engine = sp.GetRequiredService<InferenceEngine>();
        var breakers = sp.GetRequiredService<ModelBreakers>();
        var pool = new PoolDefinition
        {
            Id = "solo", InputMicroPerMillion = 1_000_000, OutputMicroPerMillion = 1_000_000,
            Models = [new PoolModel { Id = "held-model", Provider = held.Name }],
        };
        var request = Request() with { Pool = "solo", Stream = false };
        var ct = TestContext.Current.CancellationToken;

        using var xGone = new CancellationTokenSource();
        var x = engine.InvokeAsync(request, pool, null, xGone.Token);
        var xCall = await held.NextCallAsync();
        for (var i = 0; i < 3; i++)
        {
            breakers.RecordFailure("held-model", probe: true);
        }

        time.Advance(TimeSpan.FromSeconds(40));
        var p = engine.InvokeAsync(request, pool, null, ct);
        var pCall = await held.NextCallAsync();
        Assert.False(breakers.IsAvailable("held-model"));

        switch (xEnds)
        {
            case "cancelled":
                await xGone.CancelAsync();
                await Assert.ThrowsAnyAsync<OperationCanceledException>(() => x);
                break;
            case "rejected":
                xCall.SetResult("reject");
                Assert.Equal(UpstreamFailure.Rejected, (await Assert.ThrowsAsync<UpstreamException>(() => x)).Failure);
                break;
            default:
                xCall.SetResult("fail");
                Assert.Equal(UpstreamFailure.ServerError, (await Assert.ThrowsAsync<UpstreamException>(() => x)).Failure);
                break;
        }

        // P is still in flight, however long it takes: nobody else reaches the model.
        time.Advance(TimeSpan.FromSeconds(40));
        Assert.False(breakers.IsAvailable("held-model"));
        var q = await Assert.ThrowsAsync<UpstreamException>(() => engine.InvokeAsync(request, pool, null, ct));
        Assert.Equal(UpstreamFailure.NoHealthyModel, q.Failure);
        Assert.Equal(2, held.Calls);

        pCall.SetResult(pEnds);
        if (pEnds == "ok")
        {
            // The probe's own success closes the breaker.
            Assert.Equal("ok", (await p).Content);
            Assert.Equal(BreakerState.Closed, breakers.StateOf("held-model"));
            return;
        }

        // The probe's own failure re-opens it for a new open period, even when the last one elapsed while it ran.
        Assert.Equal(UpstreamFailure.ServerError, (await Assert.ThrowsAsync<UpstreamException>(() => p)).Failure);
        Assert.Equal(BreakerState.Open, breakers.StateOf("held-model"));
        Assert.False(breakers.IsAvailable("held-model"));
        time.Advance(TimeSpan.FromSeconds(40));
        Assert.Equal(BreakerState.HalfOpen, breakers.StateOf("held-model"));
        Assert.True(breakers.IsAvailable("held-model"));
    }

    /// <summary>
    /// A failure that opens the model's breaker (here the third in a row; likewise a failed half-open probe) ends that
    /// model's attempts at once: the next model of the pool answers without a backoff first. Before, the engine slept the
    /// backoff (here 1 s on a clock that never moves, so it never woke up) only to find the breaker open and fall back then.
    /// </summary>
    [Fact]
    public async Task A_failure_that_opens_the_breaker_falls_back_without_waiting_the_backoff()
    {
        var time = new FakeTimeProvider();
        await using var sp = Services(time, new()
        {
            ["Inference:RetryBaseDelayMs"] = "1000",
            ["Inference:RetryMaxDelayMs"] = "1000",
            ["Providers:Local:Models:local-mini-a:FailureRate"] = "1",
        });
        var breakers = sp.GetRequiredService<ModelBreakers>();
        breakers.RecordFailure("local-mini-a", probe: true);
        breakers.RecordFailure("local-mini-a", probe: true);

        var invoke = sp.GetRequiredService<InferenceEngine>().InvokeAsync(Request() with { Stream = false }, new PoolCatalog().Pools["cheap"], null, TestContext.Current.CancellationToken);
        var finished = await Task.WhenAny(invoke, Task.Delay(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));

        Assert.True(finished == invoke, "the invoke waited for a backoff before falling back");
        Assert.Equal("local-mini-b", (await invoke).Model);
        Assert.Equal(BreakerState.Open, breakers.StateOf("local-mini-a"));
    }

    /// <summary>A provider whose every call waits until the test says how it ends: "ok", "fail" (a 5xx) or "reject" (a 400).</summary>
    sealed class HeldProvider : IInferenceProvider
    {
        readonly ConcurrentQueue<TaskCompletionSource<string>> _pending = new();
        readonly SemaphoreSlim _started = new(0);
        int _calls;

        public string Name => "held";

        public bool Simulated => true;

        public int Calls => Volatile.Read(ref _calls);

        public async Task<TaskCompletionSource<string>> NextCallAsync()
        {
            Assert.True(await _started.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken), "the provider was not called");
            Assert.True(_pending.TryDequeue(out var call));
            return call;
        }

        public async IAsyncEnumerable<ProviderChunk> StreamAsync(ProviderRequest request, [EnumeratorCancellation] CancellationToken ct)
        {
            Interlocked.Increment(ref _calls);
            var outcome = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
            _pending.Enqueue(outcome);
            _started.Release();
            switch (await outcome.Task.WaitAsync(ct))
            {
                case "fail":
                    throw UpstreamException.FromStatus(503, Name, "overloaded", null);
                case "reject":
                    throw UpstreamException.FromStatus(400, Name, "prompt is too long", null);
            }

            yield return new ProviderChunk("ok");
            yield return new ProviderChunk(null, new Usage(1, 1), "stop");
        }
    }
}
