using System.Diagnostics;
using Arrakis.Shared.Storage;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using StackExchange.Redis;

namespace Arrakis.Shared.Hosting;

public enum HealthState
{
    Healthy,
    Degraded,
    Unhealthy,
}

public sealed record HealthCheckResult(HealthState State, string? Detail = null, object? Data = null);

/// <summary>One named input to a service's health (its database, an upstream service, a provider pool).</summary>
public interface IHealthContributor
{
    string Name { get; }

    /// <summary>
    /// Another service this one calls (dixie's finn). Its outage makes the status <c>unhealthy</c> but the answer stays
    /// 200, as the reference services answer: this service is up and says what it cannot reach. Only a failure of the
    /// service's own parts (its database, Redis) answers 503.
    /// </summary>
    bool IsUpstream => false;

    Task<HealthCheckResult> CheckAsync(CancellationToken ct);
}

public sealed class DatabaseHealth(Database database) : IHealthContributor
{
    static readonly TimeSpan PingTimeout = TimeSpan.FromSeconds(3);

    public string Name => "database";

    /// <summary>
    /// Unhealthy when the ping fails or takes longer than <see cref="PingTimeout"/>. The check stops waiting then, whatever
    /// the ping does: against a database that is black-holed (connections open, nothing answers, as in a failover or a
    /// network partition) cancelling the ping itself waits for a cancel request that never gets through, and health took
    /// a minute to answer.
    /// </summary>
    public async Task<HealthCheckResult> CheckAsync(CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(PingTimeout);
        bool ok;
        try
        {
            ok = await database.PingAsync(timeout.Token).WaitAsync(PingTimeout, ct);
        }
        catch (TimeoutException)
        {
            ok = false;
        }

        var data = new { engine = database.Engine.ToString().ToLowerInvariant(), latency_ms = sw.ElapsedMilliseconds };
        return ok ? new HealthCheckResult(HealthState.Healthy, null, data) : new HealthCheckResult(HealthState.Unhealthy, "database_unreachable", data);
    }
}

/// <summary>Redis holds the JWT replay cache and the cache invalidation bus, so a Redis that does not answer is unhealthy.</summary>
internal sealed class RedisHealth(IConnectionMultiplexer redis) : IHealthContributor
{
    // Below the multiplexer's own 5 s command timeout: while it is disconnected it queues the PING until then.
    static readonly TimeSpan PingTimeout = TimeSpan.FromSeconds(2);

    public string Name => "redis";

    public async Task<HealthCheckResult> CheckAsync(CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        try
        {
            await redis.GetDatabase().PingAsync().WaitAsync(PingTimeout, ct);
            return new HealthCheckResult(HealthState.Healthy, null, new { latency_ms = sw.ElapsedMilliseconds });
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException)
        {
            return new HealthCheckResult(HealthState.Unhealthy, "redis_unreachable", new { latency_ms = sw.ElapsedMilliseconds });
        }
    }
}

public static class HealthApi
{
    // The process's start, not this class's first use: a static initializer runs when a field is first read, which was
    // the first health request, so uptime read 0 however long the service had been up.
    static readonly DateTimeOffset Started = new(Process.GetCurrentProcess().StartTime.ToUniversalTime(), TimeSpan.Zero);

    /// <summary>
    /// How long health waits for one check before it reports it unhealthy. A check that reads the database (the quality
    /// outbox's) has no timeout of its own, and against a database that stopped answering it waited for the command
    /// timeout and for a cancel request that could not get through: health took a minute to answer.
    /// </summary>
    public static readonly TimeSpan ContributorTimeout = TimeSpan.FromSeconds(4);

    public static string Version { get; } = typeof(HealthApi).Assembly.GetName().Version?.ToString(3) ?? "0.0.0";

    /// <summary>Health routes answer HEAD too (monitors probe with it); Kestrel sends a HEAD answer's headers only.</summary>
    public static readonly string[] GetOrHead = [HttpMethods.Get, HttpMethods.Head];

    /// <summary>
    /// Maps a JSON health route, always with a JSON body: 200 healthy or degraded; 503 unhealthy when one of the
    /// service's own parts is down; 200 unhealthy when only an upstream service is (<see cref="IHealthContributor.IsUpstream"/>).
    /// </summary>
    public static IEndpointRouteBuilder MapHealth(this IEndpointRouteBuilder app, string path, string service)
    {
        app.MapMethods(path, GetOrHead, async (HttpContext http, CancellationToken ct) =>
        {
            var contributors = http.RequestServices.GetServices<IHealthContributor>().ToList();
            var results = await Task.WhenAll(contributors.Select(async c =>
            {
                try
                {
                    return (c.Name, c.IsUpstream, Result: await c.CheckAsync(ct).WaitAsync(ContributorTimeout, ct));
                }
                catch (TimeoutException)
                {
                    return (c.Name, c.IsUpstream, Result: new HealthCheckResult(HealthState.Unhealthy, c.Name + "_timeout"));
                }
                catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
                {
                    return (c.Name, c.IsUpstream, Result: new HealthCheckResult(HealthState.Unhealthy, ex.Message));
                }
            }));
            var state = results.Length == 0 ? HealthState.Healthy : results.Max(r => r.Result.State);
            var checks = results.ToDictionary(
                r => r.Name,
                r => (object)new { status = r.Result.State.ToString().ToLowerInvariant(), detail = r.Result.Detail, data = r.Result.Data });
            var uptime = (long)(DateTimeOffset.UtcNow - Started).TotalSeconds;
            var body = new Dictionary<string, object?>
            {
                ["status"] = state.ToString().ToLowerInvariant(),
                ["service"] = service,
                ["version"] = Version,
                ["uptime_seconds"] = uptime,
                ["uptime"] = uptime,
                ["checks"] = checks,
            };
            var failing = results.FirstOrDefault(r => r.Result.State == HealthState.Unhealthy);
            if (failing.Name is not null)
            {
                body["error"] = failing.Result.Detail ?? failing.Name + "_unhealthy";
            }

            var ownPartDown = results.Any(r => r.Result.State == HealthState.Unhealthy && !r.IsUpstream);
            return Results.Json(body, statusCode: ownPartDown ? 503 : 200);
        }).WithName(service + "-health").AllowAnonymous();
        return app;
    }

    /// <summary>
    /// Maps a liveness route for container and load-balancer checks: 200 while the process serves HTTP. It runs no
    /// contributor, so an unreachable dependency (dixie's finn, the database) does not get every task replaced.
    /// </summary>
    public static IEndpointRouteBuilder MapLiveness(this IEndpointRouteBuilder app, string path, string service)
    {
        app.MapMethods(path, GetOrHead, () => Results.Json(new Dictionary<string, object?>
        {
            ["status"] = "alive",
            ["service"] = service,
            ["version"] = Version,
            ["uptime_seconds"] = (long)(DateTimeOffset.UtcNow - Started).TotalSeconds,
        })).WithName(service + "-liveness").AllowAnonymous();
        return app;
    }
}
