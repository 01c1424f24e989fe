using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using OpenTelemetry.Metrics;

namespace Arrakis.Shared.Hosting;

/// <summary>Wires the catalog into both exporters: histogram bucket views for Prometheus and the optional EMF writer.</summary>
public static class MetricExport
{
    /// <summary>Applies the catalog's explicit histogram buckets (so p99 above 10 s is visible, not clipped at the default 10 000 bucket).</summary>
    public static MeterProviderBuilder AddCatalogViews(this MeterProviderBuilder metrics)
    {
        foreach (var def in MetricCatalog.All.Where(d => d is { Source: MetricSource.Instrument, Kind: InstrumentKind.Histogram, Buckets: not null }))
        {
            var meter = def.Meter;
            var name = def.Instrument;
            var boundaries = def.Buckets!.ToArray();
            metrics.AddView(i => i.Meter.Name == meter && i.Name == name ? new ExplicitBucketHistogramConfiguration { Boundaries = boundaries } : null);
        }

        return metrics;
    }

    /// <summary>Registers request counting and, when <c>Metrics:Emf:Enabled</c> is true, the CloudWatch EMF writer.</summary>
    public static WebApplicationBuilder AddMetricExport(this WebApplicationBuilder builder, string service)
    {
        var services = builder.Services;
        services.TryAddSingleton(new ServiceIdentity(service));
        services.TryAddSingleton<RequestMetrics>();
        var emf = builder.Configuration.GetSection(EmfOptions.Section).Get<EmfOptions>() ?? new EmfOptions();
        if (string.IsNullOrWhiteSpace(emf.Environment))
        {
            throw new InvalidOperationException("Metrics:Emf:Environment must not be empty.");
        }

        if (emf.Enabled)
        {
            services.AddSingleton(emf);
            services.AddHostedService(sp => new EmfMetricWriter(emf, sp.GetRequiredService<TimeProvider>(), sp.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>()));
        }

        return builder;
    }
}
