namespace Arrakis.Shared.Caching;

/// <summary>
/// The prefix of every Redis key and channel a service uses (<c>Redis:KeyPrefix</c>, default <c>arrakis:</c>): rate-limit
/// counters, the token replay cache, cache invalidation. Deployments (or test runs) that share one Redis keep apart by
/// giving each its own prefix; replicas of one deployment must share theirs.
/// </summary>
public sealed record RedisNamespace(string Prefix)
{
    public const string Setting = "Redis:KeyPrefix";

    public const string DefaultPrefix = "arrakis:";

    public static RedisNamespace FromConfiguration(string? value)
    {
        if (value is null)
        {
            return new(DefaultPrefix);
        }

        if (value.Length is 0 or > 64 || value.Any(c => char.IsWhiteSpace(c) || char.IsControl(c)))
        {
            throw new InvalidOperationException($"{Setting} must be 1-64 characters without spaces, e.g. arrakis-staging: (was '{value}').");
        }

        return new(value);
    }

    public string Key(string name) => Prefix + name;
}
