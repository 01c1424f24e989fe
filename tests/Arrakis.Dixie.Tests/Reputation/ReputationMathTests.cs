using Arrakis.Dixie.Reputation;

namespace Arrakis.Dixie.Tests.Reputation;

public sealed class ReputationMathTests
{
    const long T0 = 1_800_000_000_000;
    static readonly long Day = (long)TimeSpan.FromDays(1).TotalMilliseconds;
    static readonly ReputationMath Math7 = new(TimeSpan.FromDays(7));

    [Fact]
    public void Prior_only_has_no_score_and_the_neutral_posterior()
    {
        var view = Math7.View(BetaEvidence.Empty(T0), T0);

        Assert.Null(view.Score);
        Assert.Null(view.LowerBound);
        Assert.Equal(0, view.SampleCount);
        Assert.Equal(1.0, view.PosteriorAlpha);
        Assert.Equal(1.0, view.PosteriorBeta);
    }

    [Fact]
    public void One_good_event_gives_beta_1_75_1_25()
    {
        var e = Math7.Apply(BetaEvidence.Empty(T0), ReputationMath.LabelScore("good")!.Value, T0);
        var view = Math7.View(e, T0);

        // Posterior Beta(1 + 0.75, 1 + 0.25): mean 1.75 / 3 = 0.58333.
        Assert.Equal(1.75, view.PosteriorAlpha, 9);
        Assert.Equal(1.25, view.PosteriorBeta, 9);
        Assert.Equal(0.583333333, view.Score!.Value, 6);
        Assert.Equal(1, view.SampleCount);
        Assert.Equal(1.0, view.EffectiveSamples, 9);
        // sd = sqrt(1.75·1.25 / (3²·4)) = 0.246503; lower = 0.583333 − 1.644854·0.246503 = 0.177867.
        Assert.Equal(0.177867, view.LowerBound!.Value, 5);
    }

    [Fact]
    public void Evidence_halves_every_half_life_without_rescanning()
    {
        var e = Math7.Apply(BetaEvidence.Empty(T0), 1.0, T0);

        Assert.Equal(2.0 / 3, Math7.View(e, T0).Score!.Value, 9);          // Beta(2, 1)
        Assert.Equal(1.5 / 2.5, Math7.View(e, T0 + (7 * Day)).Score!.Value, 9);   // Beta(1.5, 1)
        Assert.Equal(1.25 / 2.25, Math7.View(e, T0 + (14 * Day)).Score!.Value, 9); // Beta(1.25, 1)
        Assert.Equal(0.5, Math7.View(e, T0 + (7 * Day)).EffectiveSamples, 9);
        Assert.Equal(1, Math7.View(e, T0 + (70 * Day)).SampleCount); // raw count never decays

        // excellent at t0, bad at t0 + 7 d: α = 1 + 0.5, β = 1 + 1 → 1.5 / 3.5.
        var later = Math7.Apply(e, 0.0, T0 + (7 * Day));
        Assert.Equal(1.5 / 3.5, Math7.View(later, T0 + (7 * Day)).Score!.Value, 9);
        Assert.Equal(2, later.Count);
    }

    /// <summary>
    /// An event weighs what its own time says, not when it reached dixie: freeside's outbox holds ratings through a dixie
    /// outage, and a rating made 14 days (two half-lives) ago counts a quarter, in whatever order the events arrive. An
    /// event dated after its arrival counts as of its arrival, so it neither outweighs the rest nor ages the evidence early.
    /// </summary>
    [Fact]
    public void An_event_weighs_by_its_own_time_in_any_order_and_a_future_date_counts_as_of_arrival()
    {
        var now = T0 + (14 * Day);
        var late = Math7.Apply(BetaEvidence.Empty(T0), 1.0, now, occurredAtMs: T0);
        Assert.Equal(0.25, late.Alpha, 9);
        Assert.Equal(0, late.Beta, 9);
        Assert.Equal(1, late.Count);

        // Excellent at t0 and bad at t0 + 14 d, delivered together at t0 + 14 d, in either order: α = 0.25, β = 1.
        var inOrder = Math7.Apply(Math7.Apply(BetaEvidence.Empty(now), 1.0, now, occurredAtMs: T0), 0.0, now, occurredAtMs: now);
        var reversed = Math7.Apply(Math7.Apply(BetaEvidence.Empty(now), 0.0, now, occurredAtMs: now), 1.0, now, occurredAtMs: T0);
        Assert.Equal(1.25 / 3.25, Math7.View(inOrder, now).Score!.Value, 9);
        Assert.Equal(Math7.View(inOrder, now).Score!.Value, Math7.View(reversed, now).Score!.Value, 12);

        // Dated a year ahead: weight 1 as of arrival, and the stored evidence is not aged to that date.
        var future = Math7.Apply(late, 1.0, now, occurredAtMs: now + (365 * Day));
        Assert.Equal(1.25, future.Alpha, 9);
        Assert.Equal(now, future.UpdatedAtMs);

        // Dated long before any half-life matters (or before 1970): counted, but it carries no evidence.
        var ancient = Math7.Apply(late, 1.0, now, occurredAtMs: -62_135_596_800_000);
        Assert.Equal(0.25, ancient.Alpha, 9);
        Assert.Equal(2, ancient.Count);
    }

    [Fact]
    public void Clock_going_backwards_never_amplifies_evidence()
    {
        var e = Math7.Apply(BetaEvidence.Empty(T0), 1.0, T0);
        Assert.Equal(1.0, Math7.DecayFactor(T0, T0 - Day));
        Assert.Equal(2.0 / 3, Math7.View(e, T0 - Day).Score!.Value, 9);
    }

    [Fact]
    public void Evidence_window_caps_alpha_plus_beta_proportionally()
    {
        var windowed = new ReputationMath(TimeSpan.FromDays(7), 12);
        var e = BetaEvidence.Empty(T0);
        for (var i = 0; i < 20; i++)
        {
            e = windowed.Apply(e, 1.0, T0);
        }

        Assert.Equal(12, e.Alpha, 9);
        Assert.Equal(0, e.Beta, 9);
        Assert.Equal(13.0 / 14, windowed.View(e, T0).Score!.Value, 9);

        // One bad event: (12 + 0, 0 + 1) scaled by 12/13.
        e = windowed.Apply(e, 0.0, T0);
        Assert.Equal(12 * 12.0 / 13, e.Alpha, 9);
        Assert.Equal(12.0 / 13, e.Beta, 9);
        Assert.Equal(21, e.Count);
    }

    [Theory]
    [InlineData("bad", 0.0)]
    [InlineData("poor", 0.25)]
    [InlineData("fair", 0.5)]
    [InlineData("good", 0.75)]
    [InlineData("excellent", 1.0)]
    public void Labels_map_to_documented_scores(string label, double expected) =>
        Assert.Equal(expected, ReputationMath.LabelScore(label));

    [Theory]
    [InlineData(-0.01)]
    [InlineData(1.01)]
    [InlineData(double.NaN)]
    public void Scores_outside_unit_interval_are_rejected(double score) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => Math7.Apply(BetaEvidence.Empty(T0), score, T0));

    [Fact]
    public void Property_score_and_lower_bound_stay_in_unit_interval()
    {
        var rng = new Random(1234);
        foreach (var math in new[] { Math7, new ReputationMath(TimeSpan.FromHours(1), 12), new ReputationMath(TimeSpan.FromDays(30), 3) })
        {
            for (var trial = 0; trial < 300; trial++)
            {
                var e = BetaEvidence.Empty(T0);
                var now = T0;
                var n = rng.Next(1, 60);
                for (var i = 0; i < n; i++)
                {
                    now += (long)(rng.NextDouble() * 3 * Day);
                    e = math.Apply(e, rng.Next(3) == 0 ? rng.Next(2) : rng.NextDouble(), now);
                    var view = math.View(e, now + (long)(rng.NextDouble() * 30 * Day));
                    Assert.InRange(view.Score!.Value, 0, 1);
                    Assert.InRange(view.LowerBound!.Value, 0, view.Score.Value);
                    Assert.True(view.PosteriorAlpha >= 1 && view.PosteriorBeta >= 1);
                }
            }
        }
    }

    [Fact]
    public void Property_a_good_event_never_lowers_and_a_bad_event_never_raises_the_score()
    {
        var rng = new Random(42);
        foreach (var math in new[] { Math7, new ReputationMath(TimeSpan.FromDays(7), 12) })
        {
            for (var trial = 0; trial < 2000; trial++)
            {
                var e = BetaEvidence.Empty(T0);
                var now = T0;
                for (var i = rng.Next(0, 40); i > 0; i--)
                {
                    now += (long)(rng.NextDouble() * Day);
                    e = math.Apply(e, rng.NextDouble(), now);
                }

                var at = now + (long)(rng.NextDouble() * 5 * Day);
                var before = math.View(e, at).Score ?? 0.5;
                var low = rng.NextDouble();
                var high = low + ((1 - low) * rng.NextDouble());
                var afterLow = math.View(math.Apply(e, low, at), at).Score!.Value;
                var afterHigh = math.View(math.Apply(e, high, at), at).Score!.Value;

                Assert.True(afterHigh >= afterLow - 1e-12, $"monotone in the event score: {high}→{afterHigh} < {low}→{afterLow}");
                Assert.True(math.View(math.Apply(e, 1.0, at), at).Score >= before - 1e-12, "excellent must not lower the score");
                Assert.True(math.View(math.Apply(e, 0.0, at), at).Score <= before + 1e-12, "bad must not raise the score");
            }
        }
    }
}
