namespace Arrakis.Finn.Routing;

/// <summary>Reputation routing modes: <c>disabled</c> (deterministic), <c>shadow</c> (score and log, route deterministically), <c>enabled</c>.</summary>
public enum RoutingMode
{
    Disabled,
    Shadow,
    Enabled,
}

/// <summary>Configuration section <c>Routing</c>.</summary>
public sealed class RoutingOptions
{
    public const string Section = "Routing";

    /// <summary>disabled | shadow | enabled (default). Re-read when configuration reloads; <c>POST /api/v1/routing/mode</c> overrides it at run time.</summary>
    public string Mode { get; set; } = "enabled";

    /// <summary>Seed for the Thompson-sampling RNG; unset means a random seed.</summary>
    public int? Seed { get; set; }

    /// <summary>Minimum probability of each healthy candidate (uniform exploration). Default 0.02, at least 0.02.</summary>
    public double ExplorationFloor { get; set; } = 0.02;

    /// <summary>Budget for the dixie query in milliseconds; on timeout the deterministic choice is used. Default 200.</summary>
    public int ReputationBudgetMs { get; set; } = 200;

    public void Validate()
    {
        if (!TryParseMode(Mode, out _))
        {
            throw new InvalidOperationException($"Routing:Mode must be disabled, shadow or enabled (was '{Mode}').");
        }

        if (ExplorationFloor is < 0.02 or > 0.5 || double.IsNaN(ExplorationFloor))
        {
            throw new InvalidOperationException("Routing:ExplorationFloor must be within [0.02, 0.5].");
        }

        if (ReputationBudgetMs is < 10 or > 5_000)
        {
            throw new InvalidOperationException("Routing:ReputationBudgetMs must be within 10..5000.");
        }
    }

    public static bool TryParseMode(string? value, out RoutingMode mode)
    {
        mode = RoutingMode.Enabled;
        switch (value?.Trim().ToLowerInvariant())
        {
            case "disabled":
                mode = RoutingMode.Disabled;
                return true;
            case "shadow":
                mode = RoutingMode.Shadow;
                return true;
            case "enabled":
                mode = RoutingMode.Enabled;
                return true;
            default:
                return false;
        }
    }

    public static string Name(RoutingMode mode) => mode.ToString().ToLowerInvariant();
}

/// <summary>
/// The live routing mode: starts from <c>Routing:Mode</c>, follows configuration reloads, and can be set at run time
/// through <c>POST /api/v1/routing/mode</c> (an explicit override wins until the next configuration change).
/// </summary>
public sealed class RoutingModeSwitch
{
    volatile string _mode;

    public RoutingModeSwitch(IConfiguration configuration, RoutingOptions options)
    {
        _mode = RoutingOptions.Name(Parse(options.Mode));
        Microsoft.Extensions.Primitives.ChangeToken.OnChange(configuration.GetReloadToken, () =>
        {
            if (RoutingOptions.TryParseMode(configuration[RoutingOptions.Section + ":Mode"], out var m))
            {
                _mode = RoutingOptions.Name(m);
            }
        });
    }

    public RoutingMode Current => Parse(_mode);

    public void Set(RoutingMode mode) => _mode = RoutingOptions.Name(mode);

    static RoutingMode Parse(string value) => RoutingOptions.TryParseMode(value, out var m) ? m : RoutingMode.Enabled;
}
