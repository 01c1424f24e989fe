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
            breakers.RecordFailure("local-mini-a");
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
}
