namespace Arrakis.Dixie.Reputation;

/// <summary>Configuration section <c>Reputation</c>.</summary>
public sealed class ReputationOptions
{
    public const string Section = "Reputation";

    /// <summary>Half-life of evidence in days (fractions allowed). Default 7.</summary>
    public double HalfLifeDays { get; set; } = 7;

    /// <summary>
    /// Evidence window for per-(agent, model) scores: alpha+beta never exceeds this, so routing forgets by count too.
    /// Default 12. 0 disables the window (time decay only).
    /// </summary>
    public double ModelEvidenceWindow { get; set; } = 12;

    /// <summary>Evidence window for the agent's overall score; default 0 (time decay only).</summary>
    public double AgentEvidenceWindow { get; set; }

    /// <summary>How long a query answer may be served from cache; every write invalidates it at once. Default 5 s.</summary>
    public double CacheSeconds { get; set; } = 5;

    public void Validate()
    {
        // TimeSpan.FromDays overflows past ~10.6 million days; a century is already far past any useful half-life.
        if (!(HalfLifeDays is > 0 and <= MaxHalfLifeDays))
        {
            throw new InvalidOperationException($"Reputation:HalfLifeDays must be a positive number of days, at most {MaxHalfLifeDays}.");
        }

        if (!IsWindow(ModelEvidenceWindow) || !IsWindow(AgentEvidenceWindow))
        {
            throw new InvalidOperationException("Reputation:ModelEvidenceWindow and AgentEvidenceWindow must be 0 (off) or at least 1.");
        }

        if (!(CacheSeconds is >= 0 and <= 9))
        {
            throw new InvalidOperationException("Reputation:CacheSeconds must be within 0..9 (the launch gate re-reads after 10 s).");
        }
    }

    /// <summary>The largest half-life accepted: a century.</summary>
    public const double MaxHalfLifeDays = 36_500;

    // 0 (off) or a finite count of at least 1; NaN fails every comparison, so it is refused here too.
    static bool IsWindow(double window) => window == 0 || (window >= 1 && double.IsFinite(window));

    public ReputationMath AgentMath() => new(TimeSpan.FromDays(HalfLifeDays), AgentEvidenceWindow > 0 ? AgentEvidenceWindow : null);

    public ReputationMath ModelMath() => new(TimeSpan.FromDays(HalfLifeDays), ModelEvidenceWindow > 0 ? ModelEvidenceWindow : null);
}
