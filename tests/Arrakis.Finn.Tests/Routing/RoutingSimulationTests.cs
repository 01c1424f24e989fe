using Arrakis.Dixie.Reputation;
using Arrakis.Finn.Routing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Arrakis.Finn.Tests.Routing;

/// <summary>
/// The responsiveness scenario over many seeds, with dixie's own scoring class (default options) in process, so
/// the HTTP test's single seed is not a lucky one.
/// </summary>
public sealed class RoutingSimulationTests
{
    const string A = "local-mini-a";
    const string B = "local-mini-b";

    sealed class DomainSource(ReputationMath math) : IReputationSource
    {
        public Dictionary<string, BetaEvidence> Evidence { get; } = [];

        public long Now { get; set; } = 1_800_000_000_000;

        public void Judge(string model, double score) =>
            Evidence[model] = math.Apply(Evidence.GetValueOrDefault(model, BetaEvidence.Empty(Now)), score, Now);

        public Task<IReadOnlyDictionary<string, ModelReputation>> ModelsAsync(string routingKey, CancellationToken ct) =>
            Task.FromResult<IReadOnlyDictionary<string, ModelReputation>>(Evidence.ToDictionary(kv => kv.Key, kv =>
            {
                var v = math.View(kv.Value, Now);
                return new ModelReputation(v.Score, v.PosteriorAlpha, v.PosteriorBeta, v.SampleCount);
            }));
    }

    [Fact]
    public async Task Every_seed_moves_away_from_a_bad_model_and_back()
    {
        var ct = TestContext.Current.CancellationToken;
        RoutingCandidate[] cheap = [new("cheap", A, true), new("cheap", B, true)];
        var worstShare = 0.0;
        var worstRecovery = 0;
        for (var seed = 1; seed <= 40; seed++)
        {
            var source = new DomainSource(new ReputationOptions().ModelMath());
            var router = new ReputationRouter(source, new RoutingModeSwitch(new ConfigurationBuilder().Build(), new RoutingOptions()),
                new RoutingOptions { Seed = seed }, NullLogger<ReputationRouter>.Instance);
            var phase1 = new List<string>();
            for (var i = 0; i < 200; i++)
            {
                var d = await router.ChooseAsync(new RoutingRequest("nft:sim", cheap, "t"), ct);
                phase1.Add(d.Chosen.Model);
                source.Judge(d.Chosen.Model, d.Chosen.Model == A ? 0.0 : 0.75);
                source.Now += 1_000;
            }

            var share = phase1.Skip(100).Count(m => m == A) / 100.0;
            worstShare = Math.Max(worstShare, share);

            var phase2 = new List<string>();
            var recovered = 0;
            while (phase2.Count < 1000 && recovered == 0)
            {
                var d = await router.ChooseAsync(new RoutingRequest("nft:sim", cheap, "t"), ct);
                phase2.Add(d.Chosen.Model);
                source.Judge(d.Chosen.Model, 0.75);
                source.Now += 1_000;
                if (phase2.Count >= 100 && phase2.TakeLast(100).Count(m => m == A) > 30)
                {
                    recovered = phase2.Count;
                }
            }

            Assert.True(share < 0.10, $"seed {seed}: A's share in requests 101-200 is {share:P0}");
            Assert.True(recovered > 0, $"seed {seed}: A never recovered above 30 % within 1,000 requests");
            worstRecovery = Math.Max(worstRecovery, recovered);
        }

        TestContext.Current.TestOutputHelper?.WriteLine($"worst phase-1 share {worstShare:P0}, worst recovery at request {worstRecovery}");
        Assert.True(worstShare < 0.10);
    }
}
