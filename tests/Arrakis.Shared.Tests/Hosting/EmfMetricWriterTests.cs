using System.Diagnostics.Metrics;
using System.Text.Json;
using Arrakis.Shared.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;

namespace Arrakis.Shared.Tests.Hosting;

public sealed class EmfMetricWriterTests
{
    static (ServiceProvider Services, IMeterFactory Meters) MeterFactory()
    {
        var services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        return (services, services.GetRequiredService<IMeterFactory>());
    }

    static List<JsonElement> Lines(StringWriter output) =>
        output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();

    static JsonElement Single(List<JsonElement> lines, string ns, string name, Func<JsonElement, bool>? where = null) =>
        Assert.Single(lines, l =>
        {
            var cw = l.GetProperty("_aws").GetProperty("CloudWatchMetrics")[0];
            return cw.GetProperty("Namespace").GetString() == ns && cw.GetProperty("Metrics")[0].GetProperty("Name").GetString() == name && (where?.Invoke(l) ?? true);
        });

    [Fact]
    public void Counters_histograms_and_gauges_are_written_under_the_catalog_namespaces_with_an_environment_dimension()
    {
        var (sp, meters) = MeterFactory();
        using var _ = sp;
        var time = new FakeTimeProvider(DateTimeOffset.FromUnixTimeMilliseconds(1_790_000_000_000));
        var output = new StringWriter();
        using var writer = new EmfMetricWriter(new EmfOptions { Enabled = true, Environment = "staging" }, time, output, meters);

        var billing = meters.Create(MetricNames.BillingMeter);
        var passed = billing.CreateCounter<long>(MetricNames.ConservationCheckPassed, "{check}");
        var failed = billing.CreateCounter<long>(MetricNames.ConservationCheckFailed, "{check}");
        var agent = meters.Create(MetricNames.AgentMeter);
        var latency = agent.CreateHistogram<double>(MetricNames.InferenceLatencyMs, "ms");
        long overspend = 0;
        agent.CreateObservableGauge(MetricNames.AgentBudgetOverspendCents, () => new Measurement<long>(overspend, new KeyValuePair<string, object?>("community_id", "c1")), "{cent}");
        agent.CreateObservableGauge(MetricNames.BudgetLimitCents, () => new[]
        {
            new Measurement<long>(1000, new KeyValuePair<string, object?>("community_id", "c1")),
            new Measurement<long>(500, new KeyValuePair<string, object?>("community_id", "c2")),
        }, "{cent}");
        var auth = meters.Create(MetricNames.AuthMeter).CreateCounter<long>(MetricNames.JwtValidationFailure, "{token}");
        var notCatalogued = billing.CreateCounter<long>("SomethingElse");

        passed.Add(3);
        passed.Add(2);
        failed.Add(0);
        latency.Record(120, new KeyValuePair<string, object?>("pool", "cheap"));
        latency.Record(80, new KeyValuePair<string, object?>("pool", "cheap"));
        latency.Record(15000, new KeyValuePair<string, object?>("pool", "reasoning"));
        auth.Add(1, new KeyValuePair<string, object?>("reason", "expired"));
        auth.Add(1, new KeyValuePair<string, object?>("reason", "bad_signature"));
        notCatalogued.Add(7);
        overspend = 42;

        writer.Flush();
        var lines = Lines(output);

        var p = Single(lines, "Arrakis/Billing", "ConservationCheckPassed");
        Assert.Equal(5, p.GetProperty("ConservationCheckPassed").GetDouble());
        Assert.Equal("staging", p.GetProperty("Environment").GetString());
        var aws = p.GetProperty("_aws");
        Assert.Equal(1_790_000_000_000, aws.GetProperty("Timestamp").GetInt64());
        var cw = aws.GetProperty("CloudWatchMetrics")[0];
        Assert.Equal(["Environment"], cw.GetProperty("Dimensions")[0].EnumerateArray().Select(d => d.GetString()));
        Assert.Equal("Count", cw.GetProperty("Metrics")[0].GetProperty("Unit").GetString());

        Assert.Equal(0, Single(lines, "Arrakis/Billing", "ConservationCheckFailed").GetProperty("ConservationCheckFailed").GetDouble());
        Assert.Equal(2, Single(lines, "Arrakis/Auth", "JwtValidationFailure").GetProperty("JwtValidationFailure").GetDouble());

        var cheap = Single(lines, "Arrakis/Agent", "InferenceLatencyMs", l => l.GetProperty("Pool").GetString() == "cheap");
        Assert.Equal([120d, 80d], cheap.GetProperty("InferenceLatencyMs").EnumerateArray().Select(v => v.GetDouble()));
        Assert.Equal(["Environment", "Pool"], cheap.GetProperty("_aws").GetProperty("CloudWatchMetrics")[0].GetProperty("Dimensions")[0].EnumerateArray().Select(d => d.GetString()));
        Assert.Equal("Milliseconds", cheap.GetProperty("_aws").GetProperty("CloudWatchMetrics")[0].GetProperty("Metrics")[0].GetProperty("Unit").GetString());
        var reasoning = Single(lines, "Arrakis/Agent", "InferenceLatencyMs", l => l.GetProperty("Pool").GetString() == "reasoning");
        Assert.Equal([15000d], reasoning.GetProperty("InferenceLatencyMs").EnumerateArray().Select(v => v.GetDouble()));

        Assert.Equal(42, Single(lines, "arrakis-staging/agent", "agent_budget_overspend_cents").GetProperty("agent_budget_overspend_cents").GetDouble());
        Assert.Equal(1500, Single(lines, "arrakis-staging/agent", "budget_limit_cents").GetProperty("budget_limit_cents").GetDouble());
        Assert.DoesNotContain(lines, l => l.TryGetProperty("SomethingElse", out JsonElement _));
        Assert.Equal(7, lines.Count);

        // The next interval: counters and histograms restart, gauges are read again.
        output.GetStringBuilder().Clear();
        time.Advance(TimeSpan.FromSeconds(10));
        passed.Add(1);
        overspend = 0;
        writer.Flush();
        lines = Lines(output);
        Assert.Equal(1, Single(lines, "Arrakis/Billing", "ConservationCheckPassed").GetProperty("ConservationCheckPassed").GetDouble());
        Assert.Equal(0, Single(lines, "arrakis-staging/agent", "agent_budget_overspend_cents").GetProperty("agent_budget_overspend_cents").GetDouble());
        Assert.DoesNotContain(lines, l => l.TryGetProperty("InferenceLatencyMs", out JsonElement _));
        Assert.Equal(0, Single(lines, "Arrakis/Auth", "JwtValidationFailure").GetProperty("JwtValidationFailure").GetDouble()); // quiet, not missing
        Assert.All(lines, l => Assert.Equal(1_790_000_010_000, l.GetProperty("_aws").GetProperty("Timestamp").GetInt64()));
    }

    [Fact]
    public void The_namespace_follows_the_configured_environment_and_large_histograms_split_into_lines_of_100()
    {
        var (sp, meters) = MeterFactory();
        using var _ = sp;
        var output = new StringWriter();
        using var writer = new EmfMetricWriter(new EmfOptions { Enabled = true, Environment = "prod" }, TimeProvider.System, output, meters);
        var cost = meters.Create(MetricNames.AgentMeter).CreateHistogram<long>(MetricNames.InvocationCostMicro, "{micro_usd}");
        for (var i = 0; i < 250; i++)
        {
            cost.Record(i, new KeyValuePair<string, object?>("pool", "cheap"));
        }

        writer.Flush();
        var lines = Lines(output);
        Assert.Equal(3, lines.Count);
        Assert.All(lines, l => Assert.Equal("arrakis-prod/agent", l.GetProperty("_aws").GetProperty("CloudWatchMetrics")[0].GetProperty("Namespace").GetString()));
        Assert.Equal(Enumerable.Range(0, 250).Select(i => (double)i), lines.SelectMany(l => l.GetProperty("invocation_cost_micro").EnumerateArray().Select(v => v.GetDouble())));
        Assert.All(lines, l => Assert.Equal("prod", l.GetProperty("Environment").GetString()));
    }

    [Fact]
    public async Task The_writer_flushes_on_its_interval_when_hosted()
    {
        var (sp, meters) = MeterFactory();
        using var _ = sp;
        var output = new StringWriter();
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        using var writer = new EmfMetricWriter(new EmfOptions { Enabled = true, IntervalSeconds = 10 }, time, output, meters);
        var spent = meters.Create(MetricNames.BillingMeter).CreateCounter<long>(MetricNames.CreditsSpent, "{debit}");
        await writer.StartAsync(TestContext.Current.CancellationToken);
        spent.Add(4);
        string text;
        var deadline = DateTime.UtcNow.AddSeconds(10);
        do
        {
            time.Advance(TimeSpan.FromSeconds(10));
            await Task.Delay(20, TestContext.Current.CancellationToken);
            lock (output)
            {
                text = output.ToString();
            }
        }
        while (!text.Contains("CreditsSpent", StringComparison.Ordinal) && DateTime.UtcNow < deadline);

        await writer.StopAsync(TestContext.Current.CancellationToken);
        var line = Assert.Single(text.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.Contains("CreditsSpent", StringComparison.Ordinal));
        Assert.Equal(4, JsonDocument.Parse(line).RootElement.GetProperty("CreditsSpent").GetDouble());
    }
}
