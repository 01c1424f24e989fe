namespace Arrakis.Shared.Contracts;

/// <summary>Community tiers, lowest first.</summary>
public enum Tier
{
    Free,
    Pro,
    Enterprise,
}

/// <summary>One candidate model of a pool: which provider serves it and the vendor's model name.</summary>
public sealed class PoolModel
{
    public string Id { get; set; } = "";

    /// <summary><c>local</c>, <c>openai</c> (any OpenAI-compatible server) or <c>anthropic</c>.</summary>
    public string Provider { get; set; } = "local";

    /// <summary>Vendor-side model name; defaults to <see cref="Id"/>.</summary>
    public string? VendorModel { get; set; }
}

/// <summary>A pool: its price in micro-USD per 1M tokens, its output cap, and its candidate models.</summary>
public sealed class PoolDefinition
{
    public string Id { get; set; } = "";

    public long InputMicroPerMillion { get; set; }

    public long OutputMicroPerMillion { get; set; }

    /// <summary>Output cap when a request names no <c>max_tokens</c> (and the largest it may name).</summary>
    public int DefaultMaxTokens { get; set; } = 1024;

    public int MaxTokensLimit { get; set; } = 8192;

    public List<PoolModel> Models { get; set; } = [];
}

/// <summary>
/// Pools, tier access and prices, shared by freeside (which reserves the worst case) and finn (which meters the
/// actual cost) so both compute money the same way. Bound from the <c>Pools</c> configuration section.
/// </summary>
public sealed class PoolCatalog
{
    public const string Section = "Pools";

    /// <summary>The longest model id: what dixie keeps a rating's <c>model</c> under (a longer one's ratings are refused).</summary>
    public const int MaxModelIdLength = 128;

    /// <summary>The longest pool id: what dixie keeps a rating's <c>pool</c> under.</summary>
    public const int MaxPoolIdLength = 64;

    public Dictionary<string, PoolDefinition> Pools { get; set; } = Defaults();

    public Dictionary<string, List<string>> TierPools { get; set; } = new(StringComparer.OrdinalIgnoreCase)
    {
        ["free"] = ["cheap"],
        ["pro"] = ["cheap", "fast-code", "reviewer"],
        ["enterprise"] = ["cheap", "fast-code", "reviewer", "reasoning", "architect"],
    };

    public Dictionary<string, string> DefaultPool { get; set; } = new(StringComparer.OrdinalIgnoreCase)
    {
        ["free"] = "cheap",
        ["pro"] = "fast-code",
        ["enterprise"] = "reviewer",
    };

    /// <summary>
    /// The catalog with the configuration's changes. A list the configuration gives (a pool's <c>Models</c>, a tier's
    /// <c>TierPools</c>) replaces the default one instead of being appended to it, as the binder would: a config block
    /// can then switch a pool to a vendor, or take a pool away from a tier.
    /// </summary>
    public static PoolCatalog FromConfiguration(IConfiguration configuration)
    {
        var catalog = new PoolCatalog();
        var section = configuration.GetSection(Section);
        if (section.Exists())
        {
            section.Bind(catalog);
        }

        foreach (var (id, pool) in catalog.Pools)
        {
            pool.Id = id;
            var models = section.GetSection($"Pools:{id}:Models");
            if (models.Exists())
            {
                pool.Models = Ordered(models).Select(c => c.Get<PoolModel>() ?? new PoolModel()).ToList();
            }

            foreach (var model in pool.Models)
            {
                model.VendorModel ??= model.Id;
            }
        }

        foreach (var tier in section.GetSection(nameof(TierPools)).GetChildren())
        {
            catalog.TierPools[tier.Key] = Ordered(tier).Select(c => c.Value).OfType<string>().ToList();
        }

        if ((catalog.IdProblem() ?? catalog.TierProblem()) is { } problem)
        {
            throw new Microsoft.Extensions.Options.OptionsValidationException(Section, typeof(PoolCatalog), [problem]);
        }

        return catalog;
    }

    /// <summary>
    /// A pool or model id that quality ratings cannot name: empty, with surrounding whitespace or control characters, or
    /// longer than dixie keeps (<see cref="MaxPoolIdLength"/>, <see cref="MaxModelIdLength"/>). Every rating freeside
    /// attached to such a model was refused by dixie (400) and went dead in the outbox, agent score and all, and one with
    /// padded spaces was counted for another id than the one finn routes by; both services refuse it at start-up instead.
    /// </summary>
    string? IdProblem()
    {
        static bool Bad(string id, int max) => id.Length is 0 || id.Length > max || id.Trim().Length != id.Length || id.Any(char.IsControl);
        foreach (var (id, pool) in Pools)
        {
            if (Bad(id, MaxPoolIdLength))
            {
                return $"Pools:Pools has a pool id '{id}' that is empty, padded with spaces, or longer than {MaxPoolIdLength} characters.";
            }

            if (pool.Models.FirstOrDefault(m => Bad(m.Id, MaxModelIdLength)) is { } model)
            {
                return $"Pools:Pools:{id}:Models has a model Id '{model.Id}' that is empty, padded with spaces, or longer than {MaxModelIdLength} characters "
                    + "(quality ratings name models by it); set Id to a short name and VendorModel to the vendor's model name.";
            }
        }

        return null;
    }

    /// <summary>
    /// A tier list that names an unknown pool, or a tier's default pool outside its (non-empty) list: every call of that
    /// tier that names no model would be refused (402 TIER_UPGRADE_REQUIRED), so both services refuse the configuration at
    /// start-up instead.
    /// </summary>
    string? TierProblem()
    {
        foreach (var tier in Enum.GetValues<Tier>())
        {
            var name = tier.ToString().ToLowerInvariant();
            var pools = TierPools.TryGetValue(name, out var p) ? p : [];
            if (pools.FirstOrDefault(id => !Pools.ContainsKey(id)) is { } unknown)
            {
                return $"Pools:TierPools:{name} names pool '{unknown}', which does not exist (pools: {string.Join(", ", Pools.Keys)}).";
            }

            var fallback = DefaultPoolFor(tier);
            if (pools.Count > 0 && !pools.Contains(fallback, StringComparer.Ordinal))
            {
                return $"Pools:DefaultPool:{name} is '{fallback}', which Pools:TierPools:{name} does not include ({string.Join(", ", pools)}); "
                    + $"set Pools__DefaultPool__{name} to one of them.";
            }
        }

        return null;
    }

    static IEnumerable<IConfigurationSection> Ordered(IConfigurationSection list) =>
        list.GetChildren().OrderBy(c => int.TryParse(c.Key, out var i) ? i : int.MaxValue);

    public bool TierAllows(Tier tier, string pool) =>
        TierPools.TryGetValue(tier.ToString(), out var pools) && pools.Contains(pool, StringComparer.Ordinal);

    public string DefaultPoolFor(Tier tier) => DefaultPool.TryGetValue(tier.ToString(), out var p) ? p : "cheap";

    /// <summary>The lowest tier whose pools include <paramref name="pool"/>, for upgrade messages.</summary>
    public Tier? LowestTierFor(string pool) =>
        Enum.GetValues<Tier>().Cast<Tier?>().FirstOrDefault(t => TierAllows(t!.Value, pool));

    /// <summary>Cost in micro-USD, rounded up so we never undercharge a fraction.</summary>
    public static long CostMicro(PoolDefinition pool, long inputTokens, long outputTokens)
    {
        checked
        {
            var numerator = (inputTokens * pool.InputMicroPerMillion) + (outputTokens * pool.OutputMicroPerMillion);
            return (numerator + 999_999) / 1_000_000;
        }
    }

    static Dictionary<string, PoolDefinition> Defaults() => new(StringComparer.Ordinal)
    {
        ["cheap"] = new() { Id = "cheap", InputMicroPerMillion = 150_000, OutputMicroPerMillion = 600_000, DefaultMaxTokens = 256, Models = [new() { Id = "local-mini-a" }, new() { Id = "local-mini-b" }] },
        ["fast-code"] = new() { Id = "fast-code", InputMicroPerMillion = 500_000, OutputMicroPerMillion = 1_500_000, DefaultMaxTokens = 1024, Models = [new() { Id = "local-coder" }] },
        ["reviewer"] = new() { Id = "reviewer", InputMicroPerMillion = 3_000_000, OutputMicroPerMillion = 15_000_000, DefaultMaxTokens = 2048, Models = [new() { Id = "local-reviewer" }] },
        ["reasoning"] = new() { Id = "reasoning", InputMicroPerMillion = 15_000_000, OutputMicroPerMillion = 60_000_000, DefaultMaxTokens = 4096, Models = [new() { Id = "local-reasoner" }] },
        ["architect"] = new() { Id = "architect", InputMicroPerMillion = 15_000_000, OutputMicroPerMillion = 75_000_000, DefaultMaxTokens = 4096, Models = [new() { Id = "local-architect" }] },
    };
}

/// <summary>Token arithmetic both sides agree on.</summary>
public static class TokenMath
{
    /// <summary>
    /// An upper bound on the input tokens of a prompt for any tokenizer we meter (one token never covers less than one
    /// UTF-8 byte), plus per-message framing. Reservations use it so the metered cost never exceeds the reservation.
    /// </summary>
    public static long InputUpperBound(IEnumerable<ChatMessage> messages) =>
        3 + messages.Sum(m => 4L + System.Text.Encoding.UTF8.GetByteCount(m.Content) + System.Text.Encoding.UTF8.GetByteCount(m.Role));
}
