using System.Text.Json;
using System.Text.RegularExpressions;
using Arrakis.Shared.Hosting;

namespace Arrakis.Shared.Tests.Deploy;

/// <summary>Every metric a dashboard, alarm, log filter or alert rule names is one the catalog says we emit.</summary>
public sealed partial class MetricReferenceTests
{
    static readonly string Env = "staging";

    static string Ns(string raw) => DeployFiles.Resolve(raw);

    [Fact]
    public void Terraform_alarms_and_log_filters_use_catalogued_cloudwatch_metrics()
    {
        var missing = new List<string>();
        var checkedCount = 0;
        foreach (var (name, body) in DeployFiles.Resources("aws_cloudwatch_metric_alarm"))
        {
            if (body.TryGetProperty("metric_name", out var metric))
            {
                checkedCount++;
                var ns = Ns(body.GetProperty("namespace").GetString()!);
                if (!MetricCatalog.HasCloudWatch(ns, metric.GetString()!, Env))
                {
                    missing.Add($"alarm {name}: {ns} {metric.GetString()}");
                }
            }

            if (body.TryGetProperty("metric_query", out var queries))
            {
                foreach (var q in queries.EnumerateArray().Where(q => q.TryGetProperty("metric", out _)))
                {
                    checkedCount++;
                    var m = q.GetProperty("metric")[0];
                    var ns = Ns(m.GetProperty("namespace").GetString()!);
                    if (!MetricCatalog.HasCloudWatch(ns, m.GetProperty("metric_name").GetString()!, Env))
                    {
                        missing.Add($"alarm {name}: {ns} {m.GetProperty("metric_name").GetString()}");
                    }
                }
            }
        }

        foreach (var (name, body) in DeployFiles.Resources("aws_cloudwatch_log_metric_filter"))
        {
            checkedCount++;
            var t = body.GetProperty("metric_transformation")[0];
            var ns = Ns(t.GetProperty("namespace").GetString()!);
            var metric = t.GetProperty("name").GetString()!;
            if (!MetricCatalog.HasCloudWatch(ns, metric, Env) || MetricCatalog.All.Single(d => d.NamespaceFor(Env) == ns && d.Name == metric).Source != MetricSource.LogFilter)
            {
                missing.Add($"log filter {name}: {ns} {metric}");
            }
        }

        Assert.True(checkedCount > 20, $"only {checkedCount} metric references found");
        Assert.True(missing.Count == 0, "not in MetricCatalog:\n" + string.Join("\n", missing));
    }

    [Fact]
    public void Terraform_dashboards_use_catalogued_cloudwatch_metrics()
    {
        var missing = new List<string>();
        var count = 0;
        foreach (var (fileName, doc) in DeployFiles.RenderedDashboards(Env))
        {
            var widgets = doc.RootElement.GetProperty("widgets").EnumerateArray().Where(w => w.GetProperty("type").GetString() == "metric").ToList();
            Assert.NotEmpty(widgets);
            foreach (var w in widgets)
            {
                foreach (var row in w.GetProperty("properties").GetProperty("metrics").EnumerateArray())
                {
                    if (row[0].ValueKind != JsonValueKind.String)
                    {
                        continue; // a metric-math expression row
                    }

                    count++;
                    var ns = row[0].GetString()!;
                    var name = row[1].GetString()!;
                    if (!MetricCatalog.HasCloudWatch(ns, name, Env))
                    {
                        missing.Add($"{fileName}: {ns} {name}");
                    }

                    var def = MetricCatalog.All.FirstOrDefault(d => d.NamespaceFor(Env) == ns && d.Name == name);
                    if (def?.Source == MetricSource.Instrument)
                    {
                        // EMF lines carry Environment plus the catalogued dimensions; a dashboard row must ask for exactly those.
                        var dims = row.EnumerateArray().Skip(2).TakeWhile(e => e.ValueKind == JsonValueKind.String).Select(e => e.GetString()!).Where((_, i) => i % 2 == 0).ToHashSet();
                        var expected = def.DimensionMap.Values.Append("Environment").ToHashSet();
                        if (!dims.SetEquals(expected))
                        {
                            missing.Add($"{fileName}: {ns} {name} dimensions [{string.Join(",", dims)}] but EMF writes [{string.Join(",", expected)}]");
                        }
                    }
                }
            }
        }

        Assert.True(count > 40, $"only {count} dashboard metric rows");
        Assert.True(missing.Count == 0, string.Join("\n", missing));
    }

    [Fact]
    public void Prometheus_rules_and_grafana_dashboards_use_catalogued_series()
    {
        var exprs = new List<(string Source, string Expr)>();
        // alerts.yml: the expr values (single-line or folded >- blocks)
        var rules = File.ReadAllText(Path.Combine(DeployFiles.Root, "deploy", "prometheus", "alerts.yml"));
        foreach (Match m in ExprBlock().Matches(rules))
        {
            exprs.Add(("alerts.yml", m.Groups["expr"].Value));
        }

        Assert.Equal(7, exprs.Count);
        foreach (var file in Directory.GetFiles(Path.Combine(DeployFiles.Root, "deploy", "grafana"), "*.json"))
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(file));
            foreach (var panel in doc.RootElement.GetProperty("panels").EnumerateArray())
            {
                foreach (var t in panel.GetProperty("targets").EnumerateArray())
                {
                    exprs.Add((Path.GetFileName(file), t.GetProperty("expr").GetString()!));
                }
            }
        }

        Assert.Equal(4, exprs.Select(e => e.Source).Where(s => s.EndsWith(".json", StringComparison.Ordinal)).Distinct().Count());
        var missing = new List<string>();
        var seen = new HashSet<string>();
        foreach (var (source, expr) in exprs)
        {
            var names = PromQl.MetricNames(expr);
            Assert.True(names.Count > 0, $"{source}: no metric in {expr}");
            foreach (var n in names)
            {
                seen.Add(n);
                if (!MetricCatalog.HasPrometheusSeries(n))
                {
                    missing.Add($"{source}: {n} in {expr}");
                }
            }
        }

        Assert.Contains("InferenceLatencyMs_milliseconds_bucket", seen);
        Assert.Contains("ConservationCheckFailed_total", seen);
        Assert.True(missing.Count == 0, "not in MetricCatalog:\n" + string.Join("\n", missing));
    }

    [Fact]
    public void The_promql_name_extractor_finds_metrics_and_skips_functions_labels_and_keywords()
    {
        Assert.Equal(
            ["ConservationCheckFailed_total"],
            PromQl.MetricNames("sum by (job) (increase(ConservationCheckFailed_total[5m])) > 0 or sum by (job) (ConservationCheckFailed_total > 0 unless ConservationCheckFailed_total offset 5m)"));
        Assert.Equal(
            ["dotnet_process_cpu_time_seconds_total", "dotnet_process_cpu_count"],
            PromQl.MetricNames("100 * sum by (job, instance) (rate(dotnet_process_cpu_time_seconds_total{job=~\"a|b\"}[30s])) / on (job, instance) max by (job, instance) (dotnet_process_cpu_count) > 80"));
        Assert.Equal(["up"], PromQl.MetricNames("up{job=~\"freeside|finn|dixie\"} == 0"));
    }

    [GeneratedRegex(@"expr:\s*(?:>-\s*\n(?<expr>(?:[ \t]{10,}.*\n)+)|(?<expr>[^\n>][^\n]*))")]
    private static partial Regex ExprBlock();
}

/// <summary>Pulls metric names out of a PromQL expression (enough for our rules and panels).</summary>
internal static partial class PromQl
{
    static readonly HashSet<string> Words =
    [
        "by", "on", "or", "and", "unless", "bool", "offset", "without", "ignoring", "group_left", "group_right", "inf", "nan",
    ];

    public static List<string> MetricNames(string expr)
    {
        var s = Strings().Replace(expr, "\"\"");
        s = Selectors().Replace(s, string.Empty);
        s = Ranges().Replace(s, string.Empty);
        s = Grouping().Replace(s, string.Empty);
        var names = new List<string>();
        foreach (Match m in Identifier().Matches(s))
        {
            var word = m.Groups["id"].Value;
            var isCall = m.Groups["call"].Success;
            if (!isCall && !Words.Contains(word) && !names.Contains(word))
            {
                names.Add(word);
            }
        }

        return names;
    }

    [GeneratedRegex("\"(?:[^\"\\\\]|\\\\.)*\"")]
    private static partial Regex Strings();

    [GeneratedRegex(@"\{[^}]*\}")]
    private static partial Regex Selectors();

    [GeneratedRegex(@"\[[^\]]*\]")]
    private static partial Regex Ranges();

    [GeneratedRegex(@"\b(?:by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)")]
    private static partial Regex Grouping();

    [GeneratedRegex(@"(?<![\w.])(?<id>[A-Za-z_:][A-Za-z0-9_:]*)(?<call>\s*\()?")]
    private static partial Regex Identifier();
}
