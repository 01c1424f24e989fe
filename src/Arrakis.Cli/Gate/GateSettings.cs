namespace Arrakis.Cli.Gate;

/// <summary>What the gate runs against; flags win over the environment (freeside-launch-gate.md §2.1).</summary>
internal sealed record GateSettings
{
    /// <summary>The smoke script's defaults (§1): the checklist's commands name no URL and mean staging. Locally, set FREESIDE_URL and DIXIE_URL.</summary>
    public const string DefaultFreesideUrl = "https://staging.api.arrakis.community";
    public const string DefaultDixieUrl = "https://dixie.staging.arrakis.community";

    public string FreesideUrl { get; init; } = DefaultFreesideUrl;

    public string DixieUrl { get; init; } = DefaultDixieUrl;

    public string? TestKeyPath { get; init; }

    public string? CommunityId { get; init; }

    /// <summary>Total attempts for the P0-1/P0-2 GETs (not re-tries after the first).</summary>
    public int Retries { get; init; } = 1;

    public bool AutoSeed { get; init; }

    public bool Chaos { get; init; }

    public bool Json { get; init; }

    public string? TestNftContract { get; init; }

    public string? TestNftTokenId { get; init; }

    public string? SepoliaRpcUrl { get; init; }

    public string? StagingWalletKey { get; init; }

    public static GateSettings FromEnvironment(Func<string, string?> env) => new()
    {
        FreesideUrl = NonEmpty(env("FREESIDE_URL")) ?? DefaultFreesideUrl,
        DixieUrl = NonEmpty(env("DIXIE_URL")) ?? DefaultDixieUrl,
        TestNftContract = NonEmpty(env("TEST_NFT_CONTRACT")),
        TestNftTokenId = NonEmpty(env("TEST_NFT_TOKEN_ID")),
        SepoliaRpcUrl = NonEmpty(env("SEPOLIA_RPC_URL")),
        StagingWalletKey = NonEmpty(env("STAGING_WALLET_KEY")),
    };

    internal static string? NonEmpty(string? value) => string.IsNullOrWhiteSpace(value) ? null : value;
}

/// <summary>
/// The gate's clock: per-request limits (curl --max-time in the original), the retry pause and the autopoietic waits.
/// Defaults are the contract's; tests shrink them.
/// </summary>
internal sealed record GateTimings
{
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromSeconds(2);

    public TimeSpan HealthTimeout { get; init; } = TimeSpan.FromSeconds(10);

    public TimeSpan InvokeTimeout { get; init; } = TimeSpan.FromSeconds(30);

    public TimeSpan BudgetTimeout { get; init; } = TimeSpan.FromSeconds(10);

    public TimeSpan DuplicateInvokeTimeout { get; init; } = TimeSpan.FromSeconds(15);

    public TimeSpan SseTimeout { get; init; } = TimeSpan.FromSeconds(15);

    public TimeSpan QualityTimeout { get; init; } = TimeSpan.FromSeconds(10);

    public TimeSpan ReputationTimeout { get; init; } = TimeSpan.FromSeconds(10);

    public TimeSpan X402Timeout { get; init; } = TimeSpan.FromSeconds(15);

    public TimeSpan X402PaidTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>SDD §FR-7: reputation must move within 10 s of the quality events.</summary>
    public TimeSpan AutopoieticWait { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>The extra wait (30 s in total) before an unchanged score is a SKIP.</summary>
    public TimeSpan AutopoieticExtraWait { get; init; } = TimeSpan.FromSeconds(20);

    /// <summary>How the gate sleeps; tests may replace it.</summary>
    public Func<TimeSpan, CancellationToken, Task> Delay { get; init; } = static (span, ct) => span <= TimeSpan.Zero ? Task.CompletedTask : Task.Delay(span, ct);
}
