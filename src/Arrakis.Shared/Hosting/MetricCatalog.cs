using System.Text;

namespace Arrakis.Shared.Hosting;

/// <summary>Where a catalogued metric's values come from.</summary>
public enum MetricSource
{
    /// <summary>A <c>System.Diagnostics.Metrics</c> instrument on an <c>Arrakis.*</c> meter: Prometheus and EMF both read it.</summary>
    Instrument,

    /// <summary>A built-in .NET runtime instrument, exported to Prometheus only (CloudWatch has AWS/ECS for the same facts).</summary>
    Runtime,

    /// <summary>A CloudWatch log metric filter over our JSON log lines (deploy/terraform/monitoring.tf).</summary>
    LogFilter,

    /// <summary>Published by AWS itself (ECS, RDS, ALB, ElastiCache).</summary>
    Aws,

    /// <summary>Synthesised by the Prometheus server for every scrape target (<c>up</c>).</summary>
    Scrape,
}

public enum InstrumentKind
{
    Counter,
    UpDownCounter,
    Gauge,
    Histogram,
}

/// <summary>
/// One metric: its CloudWatch namespace/name/unit, and (for instruments) the meter and instrument that produce it and
/// the exact Prometheus series the OpenTelemetry exporter writes for it.
/// </summary>
/// <param name="Namespace">CloudWatch namespace; <c>{env}</c> is replaced by the environment (null: Prometheus only).</param>
/// <param name="Name">CloudWatch metric name.</param>
/// <param name="CloudWatchUnit">EMF/CloudWatch unit (Count, Milliseconds, None, Percent, …).</param>
/// <param name="Meter">Producing meter (instruments only).</param>
/// <param name="Instrument">Producing instrument name.</param>
/// <param name="Kind">Instrument kind; decides the Prometheus suffixes and how EMF aggregates.</param>
/// <param name="InstrumentUnit">The unit the instrument is created with (decides the Prometheus unit suffix).</param>
/// <param name="Dimensions">Instrument tag → CloudWatch dimension (besides <c>Environment</c>, which every EMF line carries).</param>
/// <param name="Producers">The services expected to expose it, or the log event a filter reads.</param>
/// <param name="Buckets">Explicit histogram bucket boundaries (applied as an OpenTelemetry view).</param>
/// <param name="PrometheusOverride">Prometheus name for runtime/scrape metrics that are not created by our code.</param>
public sealed record MetricDefinition(
    string? Namespace,
    string Name,
    string CloudWatchUnit,
    MetricSource Source,
    string? Meter = null,
    string? Instrument = null,
    InstrumentKind Kind = InstrumentKind.Counter,
    string? InstrumentUnit = null,
    IReadOnlyDictionary<string, string>? Dimensions = null,
    IReadOnlyList<string>? Producers = null,
    IReadOnlyList<double>? Buckets = null,
    string? PrometheusOverride = null)
{
    public IReadOnlyDictionary<string, string> DimensionMap { get; } = Dimensions ?? new Dictionary<string, string>();

    /// <summary>The CloudWatch namespace for one environment (e.g. <c>arrakis-staging/agent</c>).</summary>
    public string? NamespaceFor(string environment) => Namespace?.Replace("{env}", environment, StringComparison.Ordinal);

    /// <summary>The metric family name on <c>/metrics</c> (histograms add <c>_bucket</c>, <c>_sum</c>, <c>_count</c>).</summary>
    public string? PrometheusName => PrometheusOverride ?? (Source == MetricSource.Instrument && Instrument is not null
        ? PrometheusNaming.Name(Instrument, Kind, InstrumentUnit)
        : null);

    /// <summary>Every series name the exporter writes for this metric.</summary>
    public IReadOnlyList<string> PrometheusSeries => PrometheusName is not { } n
        ? []
        : Kind == InstrumentKind.Histogram ? [n + "_bucket", n + "_sum", n + "_count"] : [n];
}

/// <summary>
/// The single list of every metric the dashboards, alarms and alert rules name. Both exporters read the same
/// instruments: OpenTelemetry Prometheus (/metrics) and <see cref="EmfMetricWriter"/> (CloudWatch EMF on stdout).
/// </summary>
public static class MetricCatalog
{
    public const string AgentNamespace = "arrakis-{env}/agent";
    public const string AppMetricsNamespace = "arrakis-{env}/AppMetrics";

    static readonly string[] Freeside = ["freeside"];
    static readonly string[] AllServices = ["freeside", "finn", "dixie"];
    static readonly Dictionary<string, string> Pool = new() { ["pool"] = "Pool" };
    static readonly Dictionary<string, string> Service = new() { ["service"] = "Service" };

    /// <summary>Latency buckets reaching past the 10 s p99 alarm, so <c>histogram_quantile</c> can report values above it.</summary>
    public static readonly IReadOnlyList<double> LatencyBucketsMs = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 7500, 10000, 15000, 20000, 30000, 60000, 120000];

    public static readonly IReadOnlyList<double> CostBucketsMicro = [100, 500, 1000, 5000, 10000, 50000, 100000, 500000, 1000000, 5000000];

    public static IReadOnlyList<MetricDefinition> All { get; } =
    [
        // Arrakis/Agent (service-health dashboard)
        new("Arrakis/Agent", "InferenceLatencyMs", "Milliseconds", MetricSource.Instrument, MetricNames.AgentMeter, MetricNames.InferenceLatencyMs,
            InstrumentKind.Histogram, "ms", Pool, Freeside, LatencyBucketsMs),

        // arrakis-<env>/agent (economic-health dashboard, agent-budget-overspend alarm)
        Gauge(MetricNames.BudgetCommittedCents),
        Gauge(MetricNames.BudgetReservedCents),
        Gauge(MetricNames.BudgetAvailableCents),
        Gauge(MetricNames.BudgetLimitCents),
        Gauge(MetricNames.AgentBudgetOverspendCents),
        new(AgentNamespace, "invocation_count", "Count", MetricSource.Instrument, MetricNames.AgentMeter, MetricNames.InvocationCount,
            InstrumentKind.Counter, "{invocation}", Pool, Freeside),
        new(AgentNamespace, "invocation_cost_micro", "None", MetricSource.Instrument, MetricNames.AgentMeter, MetricNames.InvocationCostMicro,
            InstrumentKind.Histogram, "{micro_usd}", Pool, Freeside, CostBucketsMicro),

        // Arrakis/Billing
        Counter("Arrakis/Billing", MetricNames.BillingMeter, MetricNames.ConservationCheckPassed, "{check}"),
        Counter("Arrakis/Billing", MetricNames.BillingMeter, MetricNames.ConservationCheckFailed, "{check}"),
        Counter("Arrakis/Billing", MetricNames.BillingMeter, MetricNames.CreditsMinted, "{lot}"),
        Counter("Arrakis/Billing", MetricNames.BillingMeter, MetricNames.CreditsSpent, "{debit}"),
        Counter("Arrakis/Billing", MetricNames.PaymentsMeter, MetricNames.PaymentCreated, "{payment}"),
        Counter("Arrakis/Billing", MetricNames.PaymentsMeter, MetricNames.PaymentFinished, "{payment}"),
        Counter("Arrakis/Billing", MetricNames.PaymentsMeter, MetricNames.PaymentFailed, "{payment}"),
        // Not Arrakis.Payments' own CreditsMinted: an x402 credit note is granted through the ledger, whose CreditsMinted
        // above already counts it (source x402); both under one name counted every x402 note twice.

        // Arrakis/Auth: TokenVerifier in every service
        new("Arrakis/Auth", "JwtValidationFailure", "Count", MetricSource.Instrument, MetricNames.AuthMeter, MetricNames.JwtValidationFailure,
            InstrumentKind.Counter, "{token}", null, AllServices),

        // Arrakis/API: RequestCounting middleware in every service
        new("Arrakis/API", "RequestCount", "Count", MetricSource.Instrument, MetricNames.ApiMeter, MetricNames.RequestCount, InstrumentKind.Counter, "{request}", Service, AllServices),
        new("Arrakis/API", "Http4xxCount", "Count", MetricSource.Instrument, MetricNames.ApiMeter, MetricNames.Http4xxCount, InstrumentKind.Counter, "{request}", Service, AllServices),
        new("Arrakis/API", "Http5xxCount", "Count", MetricSource.Instrument, MetricNames.ApiMeter, MetricNames.Http5xxCount, InstrumentKind.Counter, "{request}", Service, AllServices),

        // Prometheus-only process facts (CPU/memory alert rules); CloudWatch uses AWS/ECS for these.
        new(null, "process_memory_limit_bytes", "Bytes", MetricSource.Instrument, MetricNames.ProcessMeter, MetricNames.ProcessMemoryLimitBytes,
            InstrumentKind.Gauge, "By", null, AllServices),
        Runtime("dotnet.process.cpu.time", InstrumentKind.Counter, "s", "dotnet_process_cpu_time_seconds_total"),
        Runtime("dotnet.process.cpu.count", InstrumentKind.UpDownCounter, "{cpu}", "dotnet_process_cpu_count"),
        Runtime("dotnet.process.memory.working_set", InstrumentKind.UpDownCounter, "By", "dotnet_process_memory_working_set_bytes"),
        new(null, "up", "None", MetricSource.Scrape, Producers: AllServices, PrometheusOverride: "up"),

        // arrakis-<env>/AppMetrics: CloudWatch log metric filters over our JSON log lines
        Log("JwtValidationFailedCount", "Count", "JWT_VALIDATION_FAILED"),
        Log("ConservationViolationCount", "Count", "CONSERVATION_VIOLATION"),
        Log("InvokeLatencyMs", "Milliseconds", "INVOKE_COMPLETE.duration_ms"),
        Log("ReputationQueryLatencyMs", "Milliseconds", "REPUTATION_QUERY.reputation_duration_ms"),
        Log("JwtValidationFailedDelimitedCount", "Count", "JWT_VALIDATION_FAILED (space-delimited filter)"),
        Log("ConservationViolationDelimitedCount", "Count", "CONSERVATION_VIOLATION (space-delimited filter)"),
        Log("InvokeLatencyMsDelimited", "Milliseconds", "INVOKE_COMPLETE.duration_ms (space-delimited filter)"),
        Log("ReputationQueryLatencyMsDelimited", "Milliseconds", "REPUTATION_QUERY.reputation_duration_ms (space-delimited filter)"),

        // Published by AWS
        Aws("AWS/ECS", "CPUUtilization", "Percent"),
        Aws("AWS/ECS", "MemoryUtilization", "Percent"),
        Aws("ECS/ContainerInsights", "RunningTaskCount", "Count"),
        Aws("ECS/ContainerInsights", "DesiredTaskCount", "Count"),
        Aws("AWS/RDS", "CPUUtilization", "Percent"),
        Aws("AWS/RDS", "DatabaseConnections", "Count"),
        Aws("AWS/RDS", "FreeStorageSpace", "Bytes"),
        Aws("AWS/ApplicationELB", "RequestCount", "Count"),
        Aws("AWS/ApplicationELB", "HTTPCode_Target_2XX_Count", "Count"),
        Aws("AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", "Count"),
        Aws("AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", "Count"),
        Aws("AWS/ApplicationELB", "HealthyHostCount", "Count"),
        Aws("AWS/ApplicationELB", "TargetResponseTime", "Seconds"),
        Aws("AWS/ElastiCache", "CPUUtilization", "Percent"),
        Aws("AWS/ElastiCache", "EngineCPUUtilization", "Percent"),
        Aws("AWS/ElastiCache", "DatabaseMemoryUsagePercentage", "Percent"),
        Aws("AWS/ElastiCache", "CurrConnections", "Count"),
        Aws("AWS/ElastiCache", "Evictions", "Count"),
        Aws("AWS/ElastiCache", "CacheHitRate", "Percent"),
    ];

    /// <summary>The catalogued definitions an instrument feeds (one instrument can feed one CloudWatch metric).</summary>
    public static IReadOnlyList<MetricDefinition> ForInstrument(string meter, string instrument) =>
        All.Where(d => d.Source == MetricSource.Instrument && d.Meter == meter && d.Instrument == instrument).ToList();

    /// <summary>True when <paramref name="ns"/>/<paramref name="name"/> (namespace with the environment already substituted) is catalogued.</summary>
    public static bool HasCloudWatch(string ns, string name, string environment) =>
        All.Any(d => d.NamespaceFor(environment) == ns && d.Name == name);

    /// <summary>True when <paramref name="series"/> is a series name some catalogued metric produces on <c>/metrics</c>.</summary>
    public static bool HasPrometheusSeries(string series) => All.Any(d => d.PrometheusSeries.Contains(series, StringComparer.Ordinal));

    static MetricDefinition Gauge(string instrument) =>
        new(AgentNamespace, instrument, "None", MetricSource.Instrument, MetricNames.AgentMeter, instrument, InstrumentKind.Gauge, "{cent}", null, Freeside);

    static MetricDefinition Counter(string ns, string meter, string instrument, string unit) =>
        new(ns, instrument, "Count", MetricSource.Instrument, meter, instrument, InstrumentKind.Counter, unit, null, Freeside);

    static MetricDefinition Runtime(string instrument, InstrumentKind kind, string unit, string prometheus) =>
        new(null, instrument, "None", MetricSource.Runtime, MetricNames.RuntimeMeter, instrument, kind, unit, null, AllServices, null, prometheus);

    static MetricDefinition Log(string name, string unit, string logEvent) =>
        new(AppMetricsNamespace, name, unit, MetricSource.LogFilter, Producers: [logEvent]);

    static MetricDefinition Aws(string ns, string name, string unit) => new(ns, name, unit, MetricSource.Aws);
}

/// <summary>
/// The OpenTelemetry Prometheus exporter's renaming (1.x): invalid characters become <c>_</c>, a unit suffix is added
/// unless the name already ends with it (annotations in braces add none), and counters end in <c>_total</c>.
/// </summary>
public static class PrometheusNaming
{
    public static string Name(string instrument, InstrumentKind kind, string? unit)
    {
        var name = Sanitize(instrument);
        var suffix = UnitSuffix(unit);
        if (suffix.Length > 0 && !name.EndsWith("_" + suffix, StringComparison.Ordinal))
        {
            name += "_" + suffix;
        }

        if (kind == InstrumentKind.Counter && !name.EndsWith("_total", StringComparison.Ordinal))
        {
            name += "_total";
        }

        return name;
    }

    static string Sanitize(string name)
    {
        var sb = new StringBuilder(name.Length);
        foreach (var c in name)
        {
            sb.Append(char.IsAsciiLetterOrDigit(c) || c == '_' || c == ':' ? c : '_');
        }

        return sb.ToString();
    }

    static string UnitSuffix(string? unit)
    {
        if (string.IsNullOrEmpty(unit) || unit.StartsWith('{'))
        {
            return string.Empty;
        }

        return unit switch
        {
            "ms" => "milliseconds",
            "s" => "seconds",
            "By" => "bytes",
            "1" => "ratio",
            _ => Sanitize(unit),
        };
    }
}
