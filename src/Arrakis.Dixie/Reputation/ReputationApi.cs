using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Globalization;
using System.Text.Json;
using Arrakis.Dixie.Identity;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Hosting;
using Arrakis.Shared.Http;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Arrakis.Dixie.Reputation;

public static class ReputationSetup
{
    public static WebApplicationBuilder AddReputation(this WebApplicationBuilder builder)
    {
        var options = builder.Configuration.GetSection(ReputationOptions.Section).Get<ReputationOptions>() ?? new ReputationOptions();
        options.Validate();
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton<ReputationStore>();
        builder.Services.AddSingleton<ReputationCache>();
        builder.Services.AddSingleton<ReputationMetrics>();
        builder.Services.AddSingleton<ReputationService>();
        builder.Services.AddSingleton<IHealthContributor, ReputationHealth>();
        return builder;
    }
}

/// <summary>Meter <c>Arrakis.Dixie</c>: events accepted (and replayed/conflicting), query latency.</summary>
public sealed class ReputationMetrics
{
    public const string MeterName = "Arrakis.Dixie";
    public const string EventsAccepted = "reputation_events_accepted";
    public const string EventsReplayed = "reputation_events_replayed";
    public const string EventsConflicted = "reputation_events_conflicted";
    public const string QueryDuration = "reputation_query_duration_ms";

    public ReputationMetrics(IMeterFactory meters)
    {
        var meter = meters.Create(MeterName);
        Accepted = meter.CreateCounter<long>(EventsAccepted, description: "Quality events that updated scores");
        Replayed = meter.CreateCounter<long>(EventsReplayed, description: "Duplicate event ids answered from the log");
        Conflicted = meter.CreateCounter<long>(EventsConflicted, description: "Event ids reused with a different payload");
        QueryLatency = meter.CreateHistogram<double>(QueryDuration, unit: "ms", description: "Reputation query latency");
    }

    public Counter<long> Accepted { get; }

    public Counter<long> Replayed { get; }

    public Counter<long> Conflicted { get; }

    public Histogram<double> QueryLatency { get; }
}

/// <summary>Reads and writes scores through the cache; the one place that turns stored evidence into answers.</summary>
public sealed partial class ReputationService(ReputationStore store, ReputationCache cache, TimeProvider time, ReputationMetrics metrics, ILogger<ReputationService> logger)
{
    public async Task<RecordResult> RecordAsync(ReputationEvent ev, CancellationToken ct)
    {
        var now = time.GetUtcNow().ToUnixTimeMilliseconds();
        var result = await store.RecordAsync(ev, now, (e, agent, model) => JsonSerializer.Serialize(new Dictionary<string, object?>
        {
            ["event_id"] = e.EventId,
            ["status"] = "accepted",
            ["routing_key"] = e.RoutingKey,
            ["event_score"] = e.Score,
            ["model"] = e.Model,
            ["agent"] = ScoreJson(store.AgentMath.View(agent.Evidence, now)),
            ["model_score"] = model is null ? null : ScoreJson(store.ModelMath.View(model.Evidence, now)),
        }), work =>
        {
            // The call was answered 503 (or its client left) while the event was still being recorded, and it committed
            // when the database answered again: it is accepted all the same (its retry is a replay), so its agent's
            // cached answers go and it is counted, here and only here (the call never saw this outcome).
            if (work.IsCompletedSuccessfully && work.Result.Outcome == RecordOutcome.Accepted)
            {
                _ = AcceptedAsync(ev);
            }
        }, ct);
        switch (result.Outcome)
        {
            case RecordOutcome.Accepted:
                await AcceptedAsync(ev);
                break;
            case RecordOutcome.Replayed:
                metrics.Replayed.Add(1);
                break;
            default:
                metrics.Conflicted.Add(1);
                break;
        }

        return result;
    }

    async Task AcceptedAsync(ReputationEvent ev)
    {
        await cache.InvalidateAsync(ev.RoutingKey);
        metrics.Accepted.Add(1);
        LogAccepted(ev.EventId, ev.RoutingKey, ev.Score, ev.Model ?? "", ev.Source);
    }

    public Task<Dictionary<string, object?>> QueryAsync(string routingKey) =>
        cache.GetOrAddAsync("query", routingKey, async () =>
        {
            var scores = await store.ScoresAsync(routingKey, CancellationToken.None);
            var now = time.GetUtcNow().ToUnixTimeMilliseconds();
            var agent = scores.FirstOrDefault(s => s.Model.Length == 0);
            var view = store.AgentMath.View(agent?.Evidence ?? BetaEvidence.Empty(now), now);
            var body = ScoreJson(view);
            body["routing_key"] = routingKey;
            body["models"] = scores.Where(s => s.Model.Length > 0)
                .ToDictionary(s => s.Model, s => (object?)ScoreJson(store.ModelMath.View(s.Evidence, now)));
            body["as_of"] = DateTimeOffset.FromUnixTimeMilliseconds(now).ToString("O", CultureInfo.InvariantCulture);
            return body;
        });

    public Task<Dictionary<string, object?>> ModelsAsync(string routingKey) =>
        cache.GetOrAddAsync("models", routingKey, async () =>
        {
            var scores = await store.ScoresAsync(routingKey, CancellationToken.None);
            var now = time.GetUtcNow().ToUnixTimeMilliseconds();
            var models = scores.Where(s => s.Model.Length > 0).ToDictionary(s => s.Model, s =>
            {
                var v = store.ModelMath.View(s.Evidence, now);
                return (object?)new Dictionary<string, object?>
                {
                    ["score"] = v.Score,
                    ["alpha"] = v.PosteriorAlpha,
                    ["beta"] = v.PosteriorBeta,
                    ["sample_count"] = v.SampleCount,
                    ["effective_samples"] = v.EffectiveSamples,
                };
            });
            return new Dictionary<string, object?> { ["routing_key"] = routingKey, ["models"] = models };
        });

    static Dictionary<string, object?> ScoreJson(ScoreView v) => new()
    {
        ["score"] = v.Score,
        ["sample_count"] = v.SampleCount,
        ["effective_samples"] = v.EffectiveSamples,
        ["lower_bound"] = v.LowerBound,
    };

    [LoggerMessage(EventId = 5101, EventName = "REPUTATION_EVENT_ACCEPTED", Level = LogLevel.Information,
        Message = "Quality event {EventId} for {RoutingKey}: score {Score} model {Model} from {Source}")]
    partial void LogAccepted(string eventId, string routingKey, double score, string model, string source);
}

public static class ReputationApi
{
    public static IEndpointRouteBuilder MapReputationApi(this IEndpointRouteBuilder app)
    {
        app.MapPost("/api/reputation/events", async (HttpContext http, ReputationService service) =>
        {
            JsonDocument doc;
            try
            {
                doc = await JsonDocument.ParseAsync(http.Request.Body, cancellationToken: http.RequestAborted);
            }
            catch (JsonException ex)
            {
                return Problems.Invalid("body", "The body is not valid JSON: " + ex.Message);
            }

            using (doc)
            {
                var (ev, problem) = EventParser.Parse(doc.RootElement);
                if (problem is not null)
                {
                    return problem;
                }

                var result = await service.RecordAsync(ev!, http.RequestAborted);
                if (result.Outcome == RecordOutcome.Conflict)
                {
                    return Problems.Create(409, "EVENT_ID_CONFLICT",
                        $"Event id '{ev!.EventId}' was already recorded with a different payload; use a new event id.",
                        new Dictionary<string, object?> { ["event_id"] = ev.EventId });
                }

                if (result.Outcome == RecordOutcome.Replayed)
                {
                    http.Response.Headers["Idempotency-Replayed"] = "true"; // the name freeside answers with too
                }

                return Results.Content(result.Body, "application/json", statusCode: 200);
            }
        }).RequireToken(IdentitySetup.ServicePolicy);

        app.MapGet("/api/reputation/query", async (HttpContext http, ReputationService service, ReputationMetrics metrics) =>
        {
            var sw = Stopwatch.StartNew();
            var key = http.Request.Query["routingKey"].ToString();
            if (!RoutingKey.IsValid(key))
            {
                return Problems.Invalid("routingKey", "routingKey must be " + RoutingKey.Shape + ".");
            }

            var body = await service.QueryAsync(RoutingKey.Canonical(key));
            metrics.QueryLatency.Record(sw.Elapsed.TotalMilliseconds, new KeyValuePair<string, object?>("route", "query"));
            return Results.Json(body);
        }).AllowAnonymous();

        app.MapGet("/api/reputation/models", async (HttpContext http, ReputationService service, ReputationMetrics metrics) =>
        {
            var sw = Stopwatch.StartNew();
            var key = http.Request.Query["routingKey"].ToString();
            if (!RoutingKey.IsValid(key))
            {
                return Problems.Invalid("routingKey", "routingKey must be " + RoutingKey.Shape + ".");
            }

            var body = await service.ModelsAsync(RoutingKey.Canonical(key));
            metrics.QueryLatency.Record(sw.Elapsed.TotalMilliseconds, new KeyValuePair<string, object?>("route", "models"));
            return Results.Json(body);
        }).RequireToken(IdentitySetup.ServicePolicy);
        return app;
    }
}

/// <summary>Reports the number of agents with scores; fails when the score table cannot be read.</summary>
public sealed class ReputationHealth(ReputationStore store) : IHealthContributor
{
    public string Name => "reputation";

    public async Task<HealthCheckResult> CheckAsync(CancellationToken ct)
    {
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(TimeSpan.FromSeconds(3));
            var agents = await store.AgentCountAsync(timeout.Token);
            return new HealthCheckResult(HealthState.Healthy, null, new { agents });
        }
        catch (Exception ex) when (ex is System.Data.Common.DbException or OperationCanceledException or InvalidOperationException)
        {
            return new HealthCheckResult(HealthState.Unhealthy, "reputation_store_unreadable");
        }
    }
}
