using System.Diagnostics.Metrics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Arrakis.Freeside.Communities;
using Arrakis.Freeside.Idempotency;
using Arrakis.Freeside.Identity;
using Arrakis.Freeside.RateLimiting;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Hosting;
using Arrakis.Shared.Http;
using Arrakis.Shared.Storage;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;

namespace Arrakis.Freeside.Quality;

public static class QualitySetup
{
    public static WebApplicationBuilder AddQuality(this WebApplicationBuilder builder)
    {
        var options = builder.Configuration.GetSection(QualityOptions.Section).Get<QualityOptions>() ?? new QualityOptions();
        options.Validate();
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton<QualityOutbox>();
        builder.Services.AddSingleton<QualitySignal>();
        builder.Services.AddSingleton<QualityMetrics>();
        builder.Services.TryAddSingleton<IInvocationLookup, NoInvocationLookup>();
        builder.Services.AddHostedService<QualityDeliverer>();
        builder.Services.AddSingleton<IHealthContributor, QualityOutboxHealth>();
        return builder;
    }
}

/// <summary>Wakes the deliverer when an event is enqueued, so delivery does not wait for the next poll.</summary>
public sealed class QualitySignal
{
    readonly SemaphoreSlim _signal = new(0, 1);

    public void Notify()
    {
        try
        {
            _signal.Release();
        }
        catch (SemaphoreFullException)
        {
            // Already signalled.
        }
    }

    public Task<bool> WaitAsync(TimeSpan timeout, CancellationToken ct) => _signal.WaitAsync(timeout, ct);
}

/// <summary>Meter <c>Arrakis.Freeside.Quality</c>: events queued, delivered, retried, dead.</summary>
public sealed class QualityMetrics
{
    public QualityMetrics(IMeterFactory meters)
    {
        var meter = meters.Create("Arrakis.Freeside.Quality");
        Queued = meter.CreateCounter<long>("quality_events_queued");
        Delivered = meter.CreateCounter<long>("quality_events_delivered");
        Retried = meter.CreateCounter<long>("quality_events_retried");
        Dead = meter.CreateCounter<long>("quality_events_dead");
    }

    public Counter<long> Queued { get; }

    public Counter<long> Delivered { get; }

    public Counter<long> Retried { get; }

    public Counter<long> Dead { get; }
}

public static class QualityApi
{
    static readonly string[] Labels = ["bad", "poor", "fair", "good", "excellent"];
    static readonly HashSet<string> Known = ["routingKey", "routing_key", "quality", "source", "trace_id", "traceId", "idempotency_key", "idempotencyKey"];

    public static IEndpointRouteBuilder MapQualityApi(this IEndpointRouteBuilder app)
    {
        app.MapPost("/api/agents/quality", async (HttpContext http, Database database, IInvocationLookup lookup, CommunityStore communities,
            RateLimiter rateLimiter, QualitySignal signal, QualityMetrics metrics, TimeProvider time) =>
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
                var root = doc.RootElement;
                if (root.ValueKind != JsonValueKind.Object)
                {
                    return Problems.Invalid("body", "The body must be a JSON object.");
                }

                if (JsonText.Check(root) is { } text)
                {
                    return Problems.Invalid(text.Field, text.Detail);
                }

                foreach (var p in root.EnumerateObject())
                {
                    if (!Known.Contains(p.Name))
                    {
                        return Problems.Invalid(p.Name, $"Unknown field '{p.Name}'. Allowed: routingKey, quality, source, trace_id, idempotency_key.");
                    }
                }

                if (HasWrongType(root, out var wrong))
                {
                    return Problems.Invalid(wrong!, $"{wrong} must be a string.");
                }

                if ((Disagree(root, "routingKey", "routing_key") ?? Disagree(root, "trace_id", "traceId")) is { } twice)
                {
                    return Problems.Invalid(twice, $"{twice} is given twice, under both of its spellings, with different values; send it once.");
                }

                var routingKey = Str(root, "routingKey") ?? Str(root, "routing_key");
                if (!RoutingKey.IsValid(routingKey))
                {
                    return Problems.Invalid("routingKey", "routingKey is required: " + RoutingKey.Shape + ".");
                }

                routingKey = RoutingKey.Canonical(routingKey);

                object quality;
                if (!root.TryGetProperty("quality", out var q) || q.ValueKind == JsonValueKind.Null)
                {
                    return Problems.Invalid("quality", "quality is required: bad, poor, fair, good, excellent or a number within [0, 1].");
                }

                if (q.ValueKind == JsonValueKind.String && Labels.Contains(q.GetString()))
                {
                    quality = q.GetString()!;
                }
                else if (q.ValueKind == JsonValueKind.Number && q.GetDouble() is >= 0 and <= 1 and var v)
                {
                    quality = v;
                }
                else
                {
                    return Problems.Invalid("quality", "quality must be bad, poor, fair, good, excellent or a number within [0, 1].");
                }

                var source = Str(root, "source");
                // Blank is refused here as dixie refuses it: an event queued with one could never be delivered (dead).
                if (string.IsNullOrWhiteSpace(source) || source.Length > 64 || source.Any(char.IsControl))
                {
                    return Problems.Invalid("source", "source is required: 1-64 printable characters naming who judged the answer.");
                }

                var traceId = Str(root, "trace_id") ?? Str(root, "traceId");
                if (traceId is not null && (string.IsNullOrWhiteSpace(traceId) || traceId.Length > 128 || traceId.Any(char.IsControl)))
                {
                    return Problems.Invalid("trace_id", "trace_id must be 1-128 printable characters.");
                }

                // An idempotency key (X-Idempotency-Key, idempotency_key or idempotencyKey) makes a retry safe: the event id
                // derives from it, so the same rating sent again is queued once and answered with the same event.
                var (idempotency, keyProblem) = IdempotencyKeys.Resolve(http.Request, root);
                if (keyProblem is not null)
                {
                    return keyProblem;
                }

                var ct = http.RequestAborted;
                // The model and pool come from the caller's own community's invocations only: a trace id of another
                // community is neither used nor revealed (its pool and model would otherwise come back in the answer).
                // A token whose tenant has no community still rates the agent, without a model.
                var tenant = http.VerifiedToken().TryGetPayloadValue<string>("tenant_id", out var t) ? t : null;
                var community = string.IsNullOrEmpty(tenant) ? null : await communities.FindForTenantAsync(tenant, ct);

                // Quality events have their own per-minute limits, the invoke route's numbers for the community's tier
                // (free for a tenant without one), so a flood of ratings neither fills the outbox nor eats invoke capacity.
                var subject = http.VerifiedToken().Subject;
                var limit = await rateLimiter.CheckAsync(community?.Tier ?? Tier.Free, community?.Id ?? "tenant:" + (tenant ?? ""),
                    string.IsNullOrEmpty(subject) ? null : subject, "q:", ct);
                foreach (var (name, value) in RateLimiter.Headers(limit))
                {
                    http.Response.Headers[name] = value;
                }

                if (!limit.Allowed)
                {
                    return RateLimiter.Problem(limit);
                }

                var served = community is null ? null
                    : traceId is not null
                        ? await lookup.FindByTraceAsync(community.Id, traceId, ct) ?? await lookup.LatestForAgentAsync(community.Id, routingKey, ct)
                        : await lookup.LatestForAgentAsync(community.Id, routingKey, ct);
                var now = time.GetUtcNow().ToUnixTimeMilliseconds();
                var eventId = idempotency!.Source == IdempotencyKeySource.Generated
                    ? "qe_" + Guid.CreateVersion7().ToString("N")
                    : KeyedEventId(community?.Id ?? $"tenant:{tenant}|sub:{subject}", idempotency.Value);
                var payload = JsonSerializer.Serialize(new Dictionary<string, object?>
                {
                    ["event_id"] = eventId,
                    ["routing_key"] = routingKey,
                    ["score"] = quality,
                    ["source"] = source,
                    ["model"] = served?.Model,
                    ["pool"] = served?.Pool,
                    ["trace_id"] = traceId,
                    ["timestamp"] = now,
                });
                string? earlier = null;
                await using (var connection = await database.OpenAsync(ct))
                {
                    await using var tx = await Database.BeginWriteAsync(connection, ct);
                    if (!await QualityOutbox.EnqueueAsync(connection, tx, eventId, routingKey, payload, string.IsNullOrEmpty(subject) ? null : subject, now, ct))
                    {
                        earlier = await QualityOutbox.PayloadAsync(connection, tx, eventId, ct);
                    }

                    await tx.CommitAsync(ct);
                }

                if (earlier is not null)
                {
                    // The same key again: the same rating is answered as it was the first time; another rating is refused.
                    using var first = JsonDocument.Parse(earlier);
                    var e = first.RootElement;
                    if (Str(e, "routing_key") != routingKey || Str(e, "source") != source || Str(e, "trace_id") != traceId
                        || e.GetProperty("score").GetRawText() != JsonSerializer.Serialize(quality))
                    {
                        return Problems.Create(409, "IDEMPOTENCY_KEY_REUSED", $"Idempotency key '{idempotency.Value}' was already used for a different quality event.");
                    }

                    http.Response.Headers["Idempotency-Replayed"] = "true";
                    return Accepted(eventId, routingKey, Str(e, "model"), Str(e, "pool"));
                }

                metrics.Queued.Add(1);
                signal.Notify();
                return Accepted(eventId, routingKey, served?.Model, served?.Pool);
            }
        }).RequireToken(IdentitySetup.UserPolicy);
        return app;
    }

    static IResult Accepted(string eventId, string routingKey, string? model, string? pool) => Results.Json(new Dictionary<string, object?>
    {
        ["event_id"] = eventId,
        ["status"] = "queued",
        ["routing_key"] = routingKey,
        ["model"] = model,
        ["pool"] = pool,
    }, statusCode: 202);

    /// <summary>The event id of a keyed rating: the same key in the same scope (community, else tenant and user) gives the same id.</summary>
    static string KeyedEventId(string scope, string key) =>
        QualityDeliverer.KeyedPrefix + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(scope + "\n" + key)))[..32];

    static string? Str(JsonElement root, string name) =>
        root.TryGetProperty(name, out var el) && el.ValueKind == JsonValueKind.String && el.GetString() is { Length: > 0 } s ? s : null;

    /// <summary>The field's name when both spellings carry a value and the values differ; null when they agree.</summary>
    static string? Disagree(JsonElement root, string name, string alias) =>
        Str(root, name) is { } a && Str(root, alias) is { } b && !string.Equals(a, b, StringComparison.Ordinal) ? name : null;

    static bool HasWrongType(JsonElement root, out string? field)
    {
        foreach (var name in new[] { "routingKey", "routing_key", "source", "trace_id", "traceId" })
        {
            if (root.TryGetProperty(name, out var el) && el.ValueKind is not (JsonValueKind.String or JsonValueKind.Null))
            {
                field = name;
                return true;
            }
        }

        field = null;
        return false;
    }
}

/// <summary>Degraded while events wait longer than a minute to reach dixie (the outbox keeps them; nothing is lost).</summary>
public sealed class QualityOutboxHealth(QualityOutbox outbox, TimeProvider time) : IHealthContributor
{
    public string Name => "quality_outbox";

    public async Task<HealthCheckResult> CheckAsync(CancellationToken ct)
    {
        var counts = await outbox.CountsAsync(ct);
        var ageMs = counts.OldestPendingAtMs is { } oldest ? time.GetUtcNow().ToUnixTimeMilliseconds() - oldest : 0;
        var data = new { pending = counts.Pending, dead = counts.Dead, oldest_pending_age_ms = ageMs };
        return ageMs > 60_000
            ? new HealthCheckResult(HealthState.Degraded, "quality_events_backlogged", data)
            : new HealthCheckResult(HealthState.Healthy, null, data);
    }
}
