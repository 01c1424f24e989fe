using Arrakis.Finn.Inference;
using Arrakis.Finn.Inference.Providers;
using Arrakis.Shared.Contracts;
using Arrakis.Finn.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;

namespace Arrakis.Finn.Tests.Inference;

public sealed class LocalProviderTests
{
    static readonly PoolModel Model = new() { Id = "local-mini-a", VendorModel = "local-mini-a" };

    static async Task<(string Text, List<string> Deltas, Usage Usage, string Finish)> RunAsync(LocalProvider provider, string prompt, int maxTokens)
    {
        var deltas = new List<string>();
        Usage? usage = null;
        string? finish = null;
        await foreach (var chunk in provider.StreamAsync(new ProviderRequest(Model, [new ChatMessage("user", prompt)], maxTokens, true, "t"), TestContext.Current.CancellationToken))
        {
            if (chunk.Delta is not null)
            {
                deltas.Add(chunk.Delta);
            }

            if (chunk.Usage is not null)
            {
                usage = chunk.Usage;
                finish = chunk.FinishReason;
            }
        }

        return (string.Concat(deltas), deltas, usage!, finish!);
    }

    static LocalProvider Provider(LocalProviderOptions? options = null) => new(Options.Create(options ?? new LocalProviderOptions()), TimeProvider.System);

    [Fact]
    public async Task Same_prompt_gives_the_same_answer_and_different_prompts_differ()
    {
        var a = await RunAsync(Provider(), "Explain autopoiesis in one sentence", 256);
        var b = await RunAsync(Provider(), "Explain autopoiesis in one sentence", 256);
        var c = await RunAsync(Provider(), "Describe circuit breakers for model routing", 256);
        Assert.Equal(a.Text, b.Text);
        Assert.NotEqual(a.Text, c.Text);
        Assert.Contains("autopoiesis", a.Text, StringComparison.OrdinalIgnoreCase);
        Assert.Single(a.Text.Split(". ", StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public async Task Say_hello_in_exactly_three_words_gives_a_three_word_greeting()
    {
        var r = await RunAsync(Provider(), "Say hello in exactly 3 words", 256);
        var words = r.Text.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(3, words.Length);
        Assert.Matches("^(Hello|Hi|Greetings|Hey)", r.Text);
        Assert.Equal("stop", r.Finish);
    }

    [Fact]
    public async Task Token_counts_are_honest_and_below_the_reservation_bound()
    {
        var prompt = "Tell me about chaos engineering and resilience";
        var r = await RunAsync(Provider(), prompt, 256);
        Assert.Equal(Tokenizer.Count(r.Text), r.Usage.CompletionTokens);
        Assert.Equal(r.Deltas.Count, r.Usage.CompletionTokens);
        Assert.Equal(3 + 4 + Tokenizer.Count(prompt), r.Usage.PromptTokens);
        Assert.True(r.Usage.PromptTokens <= TokenMath.InputUpperBound([new ChatMessage("user", prompt)]));
    }

    [Fact]
    public async Task Output_stops_at_max_tokens()
    {
        var r = await RunAsync(Provider(), "Write a 10000 word essay on chaos engineering", 17);
        Assert.Equal(17, r.Usage.CompletionTokens);
        Assert.Equal(17, r.Deltas.Count);
        Assert.Equal("length", r.Finish);
        Assert.Equal(17, Tokenizer.Count(r.Text));
    }

    [Fact]
    public async Task Per_model_failure_override_fails_only_that_model()
    {
        var options = new LocalProviderOptions { Models = { ["local-mini-a"] = new LocalModelOptions { FailureRate = 1, FailureKind = "rate_limit" } } };
        var provider = Provider(options);
        var ex = await Assert.ThrowsAsync<UpstreamException>(() => RunAsync(provider, "Hi", 16));
        Assert.Equal(UpstreamFailure.RateLimited, ex.Failure);

        var other = new PoolModel { Id = "local-mini-b" };
        var count = 0;
        await foreach (var chunk in provider.StreamAsync(new ProviderRequest(other, [new ChatMessage("user", "Hi")], 16, false, "t"), TestContext.Current.CancellationToken))
        {
            count += chunk.Delta is null ? 0 : 1;
        }

        Assert.True(count > 0);
    }

    [Fact]
    public async Task Seeded_failure_rate_is_reproducible()
    {
        async Task<string> Pattern()
        {
            var provider = Provider(new LocalProviderOptions { FailureRate = 0.5, Seed = 7 });
            var outcomes = new List<char>();
            for (var i = 0; i < 20; i++)
            {
                try
                {
                    await RunAsync(provider, "Hi", 8);
                    outcomes.Add('.');
                }
                catch (UpstreamException)
                {
                    outcomes.Add('x');
                }
            }

            return new string(outcomes.ToArray());
        }

        var first = await Pattern();
        Assert.Equal(first, await Pattern());
        Assert.Contains('x', first);
        Assert.Contains('.', first);
    }

    [Fact]
    public async Task Latency_comes_from_the_time_provider()
    {
        var time = new FakeTimeProvider();
        var provider = new LocalProvider(Options.Create(new LocalProviderOptions { LatencyMs = 5000 }), time);
        var run = RunAsync(provider, "Hi", 8);
        await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.False(run.IsCompleted);
        time.Advance(TimeSpan.FromSeconds(5));
        var r = await run.WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);
        Assert.NotEmpty(r.Text);
    }
}

public sealed class ModelBreakersTests
{
    static ModelBreakers Breakers(FakeTimeProvider time) =>
        new(Options.Create(new InferenceOptions { BreakerSeed = 1 }), time);

    [Fact]
    public void Opens_after_three_consecutive_failures_only()
    {
        var time = new FakeTimeProvider();
        var b = Breakers(time);
        Assert.False(b.RecordFailure("m", probe: true));
        Assert.False(b.RecordFailure("m", probe: true));
        b.RecordSuccess("m");
        Assert.False(b.RecordFailure("m", probe: true));
        Assert.False(b.RecordFailure("m", probe: true));
        Assert.Equal(BreakerState.Closed, b.StateOf("m"));
        Assert.True(b.RecordFailure("m", probe: true));
        Assert.Equal(BreakerState.Open, b.StateOf("m"));
        Assert.False(b.IsAvailable("m"));
        Assert.False(b.TryAcquire("m", out _));
        Assert.True(b.IsAvailable("other"));
    }

    [Fact]
    public void Half_opens_after_thirty_seconds_within_jitter_and_lets_one_probe_through()
    {
        var time = new FakeTimeProvider();
        var b = Breakers(time);
        for (var i = 0; i < 3; i++)
        {
            b.RecordFailure("m", probe: true);
        }

        time.Advance(TimeSpan.FromSeconds(23.9));
        Assert.Equal(BreakerState.Open, b.StateOf("m"));
        time.Advance(TimeSpan.FromSeconds(12.2));
        Assert.Equal(BreakerState.HalfOpen, b.StateOf("m"));
        Assert.True(b.TryAcquire("m", out _));
        Assert.False(b.TryAcquire("m", out _));

        // A failed probe re-opens at once.
        Assert.True(b.RecordFailure("m", probe: true));
        Assert.Equal(BreakerState.Open, b.StateOf("m"));

        time.Advance(TimeSpan.FromSeconds(36.1));
        Assert.True(b.TryAcquire("m", out _));
        b.RecordSuccess("m");
        Assert.Equal(BreakerState.Closed, b.StateOf("m"));
        Assert.True(b.TryAcquire("m", out _));
        Assert.True(b.TryAcquire("m", out _));
    }

    [Fact]
    public void Open_period_is_jittered_around_thirty_seconds()
    {
        var waits = new List<double>();
        for (var seed = 0; seed < 20; seed++)
        {
            var time = new FakeTimeProvider();
            var b = new ModelBreakers(Options.Create(new InferenceOptions { BreakerSeed = seed }), time);
            for (var i = 0; i < 3; i++)
            {
                b.RecordFailure("m", probe: true);
            }

            var waited = 0.0;
            while (b.StateOf("m") == BreakerState.Open)
            {
                time.Advance(TimeSpan.FromMilliseconds(100));
                waited += 0.1;
            }

            waits.Add(waited);
        }

        Assert.All(waits, w => Assert.InRange(w, 24.0, 36.1));
        Assert.True(waits.Distinct().Count() > 1, "open periods should vary");
    }
}

public sealed class PoolConfigurationTests
{
    [Fact]
    public void A_configured_models_list_replaces_the_default_candidates()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Pools:Pools:cheap:Models:0:Id"] = "gpt-4o-mini",
            ["Pools:Pools:cheap:Models:0:Provider"] = "openai",
            ["Pools:Pools:cheap:Models:1:Id"] = "local-mini-a",
        }).Build();
        var catalog = InferenceSetup.LoadCatalog(configuration);
        Assert.Equal(["gpt-4o-mini", "local-mini-a"], catalog.Pools["cheap"].Models.Select(m => m.Id));
        Assert.Equal(["openai", "local"], catalog.Pools["cheap"].Models.Select(m => m.Provider));
        Assert.Equal("gpt-4o-mini", catalog.Pools["cheap"].Models[0].VendorModel);
        Assert.Equal(["local-coder"], catalog.Pools["fast-code"].Models.Select(m => m.Id));
    }

    [Fact]
    public void An_unknown_provider_fails_at_start_up()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Pools:Pools:cheap:Models:0:Id"] = "x",
            ["Pools:Pools:cheap:Models:0:Provider"] = "mystery",
        }).Build();
        Assert.Throws<OptionsValidationException>(() => InferenceSetup.LoadCatalog(configuration));
    }

    /// <summary>
    /// A model id listed twice in one pool fails at start-up naming the pool and the id; the same id in two pools, or
    /// two ids differing only in case, is allowed.
    /// </summary>
    [Fact]
    public void A_model_listed_twice_in_one_pool_fails_at_start_up()
    {
        var twice = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Pools:Pools:cheap:Models:0:Id"] = "gpt-4o-mini",
            ["Pools:Pools:cheap:Models:0:Provider"] = "openai",
            ["Pools:Pools:cheap:Models:1:Id"] = "local-mini-a",
            ["Pools:Pools:cheap:Models:2:Id"] = "gpt-4o-mini",
            ["Pools:Pools:cheap:Models:2:Provider"] = "openai",
            ["Pools:Pools:cheap:Models:2:VendorModel"] = "gpt-4o-mini-2024-07-18",
        }).Build();
        var error = Assert.Throws<OptionsValidationException>(() => InferenceSetup.LoadCatalog(twice));
        Assert.Contains("Pool 'cheap' lists model 'gpt-4o-mini' 2 times", error.Message, StringComparison.Ordinal);

        var apart = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Pools:Pools:cheap:Models:0:Id"] = "local-mini-a",
            ["Pools:Pools:cheap:Models:1:Id"] = "Local-Mini-A",
            ["Pools:Pools:fast-code:Models:0:Id"] = "local-mini-a",
        }).Build();
        var catalog = InferenceSetup.LoadCatalog(apart);
        Assert.Equal(["local-mini-a", "Local-Mini-A"], catalog.Pools["cheap"].Models.Select(m => m.Id));
        Assert.Equal(["local-mini-a"], catalog.Pools["fast-code"].Models.Select(m => m.Id));
    }
}

public sealed class RoutingTests
{
    sealed class LastCandidateRouter : IModelRouter
    {
        public Task<RoutingDecision> ChooseAsync(RoutingRequest request, CancellationToken ct)
        {
            var chosen = request.Candidates.Last(c => c.Healthy);
            return Task.FromResult(new RoutingDecision(chosen, new RoutingInfo("enabled", "test", chosen.Model, new Dictionary<string, double?> { [chosen.Model] = 0.9 })));
        }
    }

    sealed class BrokenRouter : IModelRouter
    {
        public Task<RoutingDecision> ChooseAsync(RoutingRequest request, CancellationToken ct) =>
            throw new InvalidOperationException("router down");
    }

    static async Task<FinnInvokeResult> InvokeAsync(Action<IServiceCollection> replace)
    {
        var configuration = new ConfigurationBuilder().Build();
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddMetrics();
        services.AddInference(configuration);
        replace(services);
        await using var sp = services.BuildServiceProvider();
        var engine = sp.GetRequiredService<InferenceEngine>();
        var request = new FinnInvokeRequest([new ChatMessage("user", "Hi")], "cheap", 32, "nft:1", false, "t");
        return await engine.InvokeAsync(request, new PoolCatalog().Pools["cheap"], null, TestContext.Current.CancellationToken);
    }

    [Fact]
    public async Task The_default_router_is_deterministic_and_another_router_can_replace_it()
    {
        var deterministic = await InvokeAsync(_ => { });
        Assert.Equal("local-mini-a", deterministic.Model);
        Assert.Equal(new[] { "disabled", "deterministic" }, new[] { deterministic.Routing.Mode, deterministic.Routing.Reason });

        var replaced = await InvokeAsync(s => s.AddSingleton<IModelRouter, LastCandidateRouter>());
        Assert.Equal("local-mini-b", replaced.Model);
        Assert.Equal("enabled", replaced.Routing.Mode);
        Assert.Equal(0.9, replaced.Routing.Scores["local-mini-b"]);
    }

    [Fact]
    public async Task A_failing_router_falls_back_to_the_deterministic_choice()
    {
        var result = await InvokeAsync(s => s.AddSingleton<IModelRouter, BrokenRouter>());
        Assert.Equal("local-mini-a", result.Model);
        Assert.Equal("deterministic", result.Routing.Reason);
    }
}
