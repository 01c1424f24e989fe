namespace Arrakis.Dixie.Reputation;

/// <summary>
/// Decayed Beta evidence for one score: <see cref="Alpha"/>/<see cref="Beta"/> are the success/failure mass observed
/// (without the Beta(1,1) prior), already decayed to <see cref="UpdatedAtMs"/>; <see cref="Count"/> is the raw number
/// of events ever applied.
/// </summary>
public readonly record struct BetaEvidence(double Alpha, double Beta, long Count, long UpdatedAtMs)
{
    public static BetaEvidence Empty(long nowMs) => new(0, 0, 0, nowMs);
}

/// <summary>What a score reports: posterior mean, the raw event count, decayed effective sample size and a lower credible bound.</summary>
public sealed record ScoreView(double? Score, long SampleCount, double EffectiveSamples, double? LowerBound, double PosteriorAlpha, double PosteriorBeta);

/// <summary>
/// The scoring model: a Beta posterior with a neutral Beta(1,1) prior over quality in [0,1]. An event with score s adds
/// s to alpha and 1−s to beta. Evidence decays exponentially with time (half-life), applied incrementally: the
/// stored evidence is multiplied by 2^(−Δt/halfLife) on every read and write, so no history scan is ever needed. An event
/// decays from its own timestamp (an event that arrives late, such as one that waited out a dixie outage in freeside's
/// outbox, enters already decayed, so arrival order does not matter); a timestamp after its arrival counts as arrival.
/// Optionally the evidence is also capped at a window (<c>maxEvidence</c>): when alpha+beta would exceed it, both are
/// scaled down proportionally, which makes the posterior forget by event count as well as by time (a discounted Beta,
/// as in discounted Thompson sampling) so routing recovers within hundreds of requests, not days.
/// </summary>
public sealed class ReputationMath(TimeSpan halfLife, double? maxEvidence = null)
{
    /// <summary>z for the lower bound: one-sided 95 %.</summary>
    public const double LowerBoundZ = 1.6448536269514722;

    public TimeSpan HalfLife { get; } = halfLife > TimeSpan.Zero ? halfLife : throw new ArgumentOutOfRangeException(nameof(halfLife));

    public double? MaxEvidence { get; } = maxEvidence is null or > 0 ? maxEvidence : throw new ArgumentOutOfRangeException(nameof(maxEvidence));

    /// <summary>2^(−Δt/halfLife); 1 for Δt ≤ 0 (clock went backwards: never amplify evidence).</summary>
    public double DecayFactor(long fromMs, long toMs) =>
        toMs <= fromMs ? 1.0 : Math.Pow(2.0, -(toMs - fromMs) / HalfLife.TotalMilliseconds);

    public BetaEvidence DecayTo(BetaEvidence e, long nowMs)
    {
        var f = DecayFactor(e.UpdatedAtMs, nowMs);
        return new BetaEvidence(e.Alpha * f, e.Beta * f, e.Count, Math.Max(e.UpdatedAtMs, nowMs));
    }

    /// <summary>Adds an event received at <paramref name="nowMs"/> that happened at <paramref name="occurredAtMs"/> (default: then).</summary>
    public BetaEvidence Apply(BetaEvidence e, double score, long nowMs, long? occurredAtMs = null)
    {
        if (double.IsNaN(score) || score < 0 || score > 1)
        {
            throw new ArgumentOutOfRangeException(nameof(score), "A score is within [0, 1].");
        }

        var d = DecayTo(e, nowMs);
        // DecayFactor is 1 for a timestamp at or after the evidence's time: a future date never outweighs the rest.
        var w = DecayFactor(occurredAtMs ?? nowMs, d.UpdatedAtMs);
        var a = d.Alpha + (score * w);
        var b = d.Beta + ((1 - score) * w);
        if (MaxEvidence is { } cap && a + b > cap)
        {
            var f = cap / (a + b);
            a *= f;
            b *= f;
        }

        return new BetaEvidence(a, b, e.Count + 1, d.UpdatedAtMs);
    }

    /// <summary>The view at <paramref name="nowMs"/>: score null when no event was ever applied.</summary>
    public ScoreView View(BetaEvidence e, long nowMs)
    {
        var d = DecayTo(e, nowMs);
        var alpha = 1 + d.Alpha;
        var beta = 1 + d.Beta;
        if (e.Count == 0)
        {
            return new ScoreView(null, 0, 0, null, alpha, beta);
        }

        return new ScoreView(Mean(alpha, beta), e.Count, d.Alpha + d.Beta, LowerBound(alpha, beta), alpha, beta);
    }

    public static double Mean(double alpha, double beta) => alpha / (alpha + beta);

    /// <summary>
    /// A one-sided 95 % lower credible bound of Beta(α, β) by the normal approximation mean − z·sd, clamped to [0, mean].
    /// </summary>
    public static double LowerBound(double alpha, double beta)
    {
        var n = alpha + beta;
        var mean = alpha / n;
        var sd = Math.Sqrt(alpha * beta / (n * n * (n + 1)));
        return Math.Clamp(mean - (LowerBoundZ * sd), 0, mean);
    }

    /// <summary>Quality labels: bad 0.0, poor 0.25, fair 0.5, good 0.75, excellent 1.0.</summary>
    public static double? LabelScore(string label) => label switch
    {
        "bad" => 0.0,
        "poor" => 0.25,
        "fair" => 0.5,
        "good" => 0.75,
        "excellent" => 1.0,
        _ => null,
    };

    public static readonly IReadOnlyList<string> Labels = ["bad", "poor", "fair", "good", "excellent"];
}
