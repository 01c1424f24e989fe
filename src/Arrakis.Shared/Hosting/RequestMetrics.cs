using System.Diagnostics.Metrics;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Shared.Hosting;

/// <summary>
/// Counts every HTTP response for the <c>Arrakis/API</c> metrics (RequestCount, Http4xxCount, Http5xxCount, tag
/// <c>service</c>), and publishes the memory limit the runtime sees (cgroup-aware) so memory alerts can be relative.
/// </summary>
public sealed class RequestMetrics
{
    readonly Counter<long> _requests;
    readonly Counter<long> _client;
    readonly Counter<long> _server;
    readonly KeyValuePair<string, object?> _service;

    public RequestMetrics(IMeterFactory meters, ServiceIdentity identity)
    {
        var api = meters.Create(MetricNames.ApiMeter);
        _requests = api.CreateCounter<long>(MetricNames.RequestCount, "{request}", "HTTP responses");
        _client = api.CreateCounter<long>(MetricNames.Http4xxCount, "{request}", "HTTP 4xx responses");
        _server = api.CreateCounter<long>(MetricNames.Http5xxCount, "{request}", "HTTP 5xx responses");
        _service = new("service", identity.Name);

        // Export the error counters at 0 from the start, so rules and dashboards see a series before the first error.
        _client.Add(0, _service);
        _server.Add(0, _service);
        meters.Create(MetricNames.ProcessMeter).CreateObservableGauge(
            MetricNames.ProcessMemoryLimitBytes, () => GC.GetGCMemoryInfo().TotalAvailableMemoryBytes, "By", "Memory available to the process (container limit when set)");
    }

    public void Record(int status)
    {
        _requests.Add(1, _service);
        if (status is >= 400 and < 500)
        {
            _client.Add(1, _service);
        }
        else if (status >= 500)
        {
            _server.Add(1, _service);
        }
    }

    internal static async Task Middleware(HttpContext http, RequestDelegate next)
    {
        var metrics = http.RequestServices.GetRequiredService<RequestMetrics>();
        try
        {
            await next(http);
        }
        catch
        {
            metrics.Record(500);
            throw;
        }

        metrics.Record(http.Response.StatusCode);
    }
}

/// <summary>Which service this process is (freeside, finn or dixie).</summary>
public sealed record ServiceIdentity(string Name);
