using System.Diagnostics;
using System.Text.Json;
using Arrakis.Shared.Hosting;

namespace Arrakis.Shared.Tests.Deploy;

/// <summary>
/// The CloudWatch side of "every metric a dashboard or alarm names is really emitted": a real <c>loa up</c> with the EMF
/// writer on, a real <c>loa gate --chaos</c> run against it, then every metric the Terraform alarms and dashboards read
/// from our instruments must appear in the EMF lines on stdout, under the same namespace, name and dimension names.
/// (AWS-published metrics come from AWS; log-filter metrics are checked against real log lines in LogFilterTests.)
/// </summary>
public sealed class EmittedCloudWatchMetricsTests
{
    const string Environment = "staging";

    [Fact]
    public async Task After_a_gate_run_every_instrument_metric_of_the_terraform_alarms_and_dashboards_is_in_the_emf_output()
    {
        var references = DeployFiles.CloudWatchReferences(Environment);
        var expected = references
            .Select(r => (r.Where, r.Namespace, r.Name, r.Dimensions, Definition: MetricCatalog.All.FirstOrDefault(d => d.NamespaceFor(Environment) == r.Namespace && d.Name == r.Name)))
            .Where(r => r.Definition?.Source == MetricSource.Instrument)
            .Select(r => (r.Where, r.Namespace, r.Name, Dimensions: r.Dimensions ?? r.Definition!.DimensionMap.Values.Append("Environment").ToHashSet()))
            .ToList();
        Assert.True(expected.Select(e => e.Namespace + "/" + e.Name).Distinct().Count() >= 10, $"only {expected.Count} instrument metrics referenced by Terraform");

        await using var up = await LoaProcess.Up.StartAsync(env: new Dictionary<string, string>
        {
            ["Metrics__Emf__Enabled"] = "true",
            ["Metrics__Emf__Environment"] = Environment,
            ["Metrics__Emf__IntervalSeconds"] = "1",
        });
        var gate = await LoaProcess.RunAsync(
            "gate", "--freeside-url", up.FreesideUrl, "--dixie-url", up.DixieUrl, "--test-key", Path.Combine(up.DataDir, "staging.pem"),
            "--community-id", "test-community-staging-001", "--chaos", "--retries", "3");
        Assert.True(gate.ExitCode == 0, "the gate failed:\n" + gate.Stdout + gate.Stderr);

        // EMF flushes every second; wait until every expected line has shown up (or report what never did).
        List<string> missing;
        var waited = Stopwatch.StartNew();
        do
        {
            await Task.Delay(500, TestContext.Current.CancellationToken);
            var emitted = EmfLines(up.Output);
            missing = expected
                .Where(e => !emitted.Any(m => m.Namespace == e.Namespace && m.Name == e.Name && m.Dimensions.SetEquals(e.Dimensions)))
                .Select(e => $"{e.Where}: {e.Namespace} {e.Name} [{string.Join(",", e.Dimensions.Order())}]")
                .Distinct()
                .ToList();
        }
        while (missing.Count > 0 && waited.Elapsed < TimeSpan.FromSeconds(15));

        Assert.True(missing.Count == 0, "named by Terraform but not in the EMF output after a gate run:\n" + string.Join("\n", missing));
    }

    /// <summary>Parses CloudWatch EMF lines: namespace, metric name and dimension names, checking each carries its values.</summary>
    static List<(string Namespace, string Name, HashSet<string> Dimensions)> EmfLines(string output)
    {
        var list = new List<(string, string, HashSet<string>)>();
        foreach (var line in output.Split('\n').Select(l => l.Trim()).Where(l => l.StartsWith("{\"_aws\"", StringComparison.Ordinal)))
        {
            using var doc = JsonDocument.Parse(line);
            var root = doc.RootElement;
            Assert.Equal(Environment, root.GetProperty("Environment").GetString());
            foreach (var directive in root.GetProperty("_aws").GetProperty("CloudWatchMetrics").EnumerateArray())
            {
                var ns = directive.GetProperty("Namespace").GetString()!;
                var dims = directive.GetProperty("Dimensions")[0].EnumerateArray().Select(d => d.GetString()!).ToHashSet();
                Assert.All(dims, d => Assert.True(root.TryGetProperty(d, out _), $"EMF line names dimension {d} without a value: {line}"));
                foreach (var metric in directive.GetProperty("Metrics").EnumerateArray())
                {
                    var name = metric.GetProperty("Name").GetString()!;
                    Assert.True(root.TryGetProperty(name, out var value) && value.ValueKind is JsonValueKind.Number or JsonValueKind.Array, $"EMF line without a value for {name}: {line}");
                    list.Add((ns, name, dims));
                }
            }
        }

        return list;
    }
}
