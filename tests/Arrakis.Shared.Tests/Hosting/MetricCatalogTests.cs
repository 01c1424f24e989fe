using System.Diagnostics.Metrics;
using Arrakis.Shared.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace Arrakis.Shared.Tests.Hosting;

/// <summary>
/// Runs alone: OpenTelemetry listens to every <c>Arrakis.*</c> meter in the process, so another app running at the same
/// time could register the same instrument names first and hide this test's instruments.
/// </summary>
[Collection(nameof(MetricCatalogTests))]
public sealed class MetricCatalogTests
{
    [Fact]
    public void Every_instrument_metric_names_its_meter_and_every_cloudwatch_metric_is_defined_once()
    {
        foreach (var def in MetricCatalog.All.Where(d => d.Source == MetricSource.Instrument))
        {
            Assert.StartsWith("Arrakis.", def.Meter);
            Assert.False(string.IsNullOrWhiteSpace(def.Instrument));
            Assert.NotNull(def.PrometheusName);
        }

        var cloudWatch = MetricCatalog.All.Where(d => d.Namespace is not null)
            .GroupBy(d => (d.Namespace, d.Name, d.Meter ?? d.Source.ToString()));
        Assert.All(cloudWatch, g => Assert.Single(g));
        Assert.True(MetricCatalog.HasCloudWatch("arrakis-staging/agent", "agent_budget_overspend_cents", "staging"));
        Assert.True(MetricCatalog.HasCloudWatch("Arrakis/Agent", "InferenceLatencyMs", "staging"));
        Assert.False(MetricCatalog.HasCloudWatch("Arrakis/Webhook", "WebhookReceived", "staging"));
    }

    /// <summary>
    /// Goes through the real pipeline: <c>AddServiceDefaults</c> + <c>UseServiceDefaults</c>, one instrument per catalogued
    /// metric created with the catalog's kind and unit, then a scrape of <c>/metrics</c> over HTTP. Every series name
    /// the catalog promises (and that rules and dashboards use) must appear exactly as written.
    /// </summary>
    [Fact]
    public async Task The_prometheus_names_in_the_catalog_are_the_names_the_exporter_writes()
    {
        var ct = TestContext.Current.CancellationToken;
        var port = TestStorage.FreePort();
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { EnvironmentName = "Development" });
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["LOA_DATA_DIR"] = TestStorage.TempDir(),
            ["Metrics:Emf:Enabled"] = "true",
        });
        builder.WebHost.UseUrls($"http://127.0.0.1:{port}");
        builder.AddServiceDefaults("freeside");
        await using var app = builder.Build();
        app.UseServiceDefaults();
        app.MapGet("/boom", () => Microsoft.AspNetCore.Http.Results.StatusCode(503));
        await app.StartAsync(ct);

        Assert.Contains(app.Services.GetServices<IHostedService>(), s => s is EmfMetricWriter);
        var meters = app.Services.GetRequiredService<IMeterFactory>();
        var tags = new[] { new KeyValuePair<string, object?>("pool", "cheap"), new KeyValuePair<string, object?>("service", "freeside") };
        foreach (var def in MetricCatalog.All.Where(d => d.Source == MetricSource.Instrument && d.Meter != MetricNames.ApiMeter && d.Meter != MetricNames.ProcessMeter))
        {
            var meter = meters.Create(def.Meter!);
            switch (def.Kind)
            {
                case InstrumentKind.Counter: meter.CreateCounter<long>(def.Instrument!, def.InstrumentUnit).Add(1, tags); break;
                case InstrumentKind.UpDownCounter: meter.CreateUpDownCounter<long>(def.Instrument!, def.InstrumentUnit).Add(1, tags); break;
                case InstrumentKind.Gauge: meter.CreateObservableGauge(def.Instrument!, () => new Measurement<long>(1, tags), def.InstrumentUnit); break;
                case InstrumentKind.Histogram: meter.CreateHistogram<double>(def.Instrument!, def.InstrumentUnit).Record(12_000, tags); break;
            }
        }

        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}") };
        Assert.Equal(503, (int)(await http.GetAsync("/boom", ct)).StatusCode);
        Assert.Equal(404, (int)(await http.GetAsync("/nothing-here", ct)).StatusCode);
        await http.GetStringAsync("/metrics", ct);
        await Task.Delay(400, ct);
        var text = await http.GetStringAsync("/metrics", ct);
        var names = text.Split('\n').Where(l => l.Length > 0 && l[0] != '#').Select(l => l.Split('{', ' ')[0]).ToHashSet(StringComparer.Ordinal);

        foreach (var def in MetricCatalog.All.Where(d => d.Source is MetricSource.Instrument or MetricSource.Runtime))
        {
            foreach (var series in def.PrometheusSeries)
            {
                Assert.True(names.Contains(series), $"{def.Meter}/{def.Instrument} should be exported as {series}; /metrics has: {string.Join(", ", names.Where(n => !n.StartsWith("dotnet_", StringComparison.Ordinal) || series.StartsWith("dotnet_", StringComparison.Ordinal)))}");
            }
        }

        // CreditsMinted has one source, the ledger's grant (x402 credit notes included), so no credit is counted twice.
        Assert.Single(MetricCatalog.All, d => d.Name == MetricNames.CreditsMinted);
        Assert.Single(text.Split('\n'), l => l == "# TYPE CreditsMinted_total counter");

        // The request counter saw the 503 and the 404 under service="freeside".
        Assert.Contains(text.Split('\n'), l => l.StartsWith("Http5xxCount_total{", StringComparison.Ordinal) && l.Contains("service=\"freeside\"", StringComparison.Ordinal));
        Assert.Contains(text.Split('\n'), l => l.StartsWith("Http4xxCount_total{", StringComparison.Ordinal) && l.Contains("service=\"freeside\"", StringComparison.Ordinal));

        // The latency histogram has buckets past 10 s, so a p99 above the alarm threshold is representable.
        Assert.Contains(text.Split('\n'), l => l.StartsWith("InferenceLatencyMs_milliseconds_bucket{", StringComparison.Ordinal) && l.Contains("le=\"15000\"", StringComparison.Ordinal));
        await app.StopAsync(ct);
    }
}

[CollectionDefinition(nameof(MetricCatalogTests), DisableParallelization = true)]
public sealed class MetricCatalogCollection;
