namespace Arrakis.Shared.Hosting;

/// <summary>The one list of meter and instrument names; the Prometheus and EMF exporters both read from these.</summary>
public static class MetricNames
{
    public const string AuthMeter = "Arrakis.Auth";
    public const string JwtValidationFailure = "JwtValidationFailure";
}
