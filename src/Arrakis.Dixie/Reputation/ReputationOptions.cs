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
        if (!(HalfLifeDays > 0) || double.IsInfinity(HalfLifeDays))
        {
            throw new InvalidOperationException("Reputation:HalfLifeDays must be a positive number of days.");
        }

        if (ModelEvidenceWindow < 0 || AgentEvidenceWindow < 0 || (ModelEvidenceWindow is > 0 and < 1) || (AgentEvidenceWindow is > 0 and < 1))
        {
            throw new InvalidOperationException("Reputation:ModelEvidenceWindow and AgentEvidenceWindow must be 0 (off) or at least 1.");
        }

        if (CacheSeconds is < 0 or > 9)
        {
            throw new InvalidOperationException("Reputation:CacheSeconds must be within 0..9 (the launch gate re-reads after 10 s).");
        }
    }

    public ReputationMath AgentMath() => new(TimeSpan.FromDays(HalfLifeDays), AgentEvidenceWindow > 0 ? AgentEvidenceWindow : null);

    public ReputationMath ModelMath() => new(TimeSpan.FromDays(HalfLifeDays), ModelEvidenceWindow > 0 ? ModelEvidenceWindow : null);
}
