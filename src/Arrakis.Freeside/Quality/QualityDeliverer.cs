using System.Net;
using System.Net.Http.Headers;
using System.Text;
using Arrakis.Freeside.Identity;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Arrakis.Freeside.Quality;

/// <summary>
/// Sends outbox rows to dixie <c>POST /api/reputation/events</c> with a freeside service token (iss arrakis, aud
/// loa-dixie). Wakes on every enqueue and otherwise polls. Transport errors, 401/408/429 and 5xx are retried with
/// exponential backoff and ±50 % jitter, forever (a dixie outage only delays); 400, 409 and 422 are permanent (dead),
/// except dixie's 409 for a keyed rating whose key it already counted, which is done.
/// A row is marked delivered only after dixie answered 2xx, and dixie's event_id idempotency makes a redelivery
/// after a crash between the two harmless. Once a minute it deletes the events delivered longer ago than
/// <see cref="QualityOptions.DeliveredRetentionHours"/> (a week by default), so the outbox holds the backlog and recent history, not
/// every event ever sent.
/// </summary>
public sealed partial class QualityDeliverer(
    QualityOutbox outbox, QualitySignal signal, QualityOptions options, IHttpClientFactory clients, TokenIssuer issuer,
    TimeProvider time, QualityMetrics metrics, ILogger<QualityDeliverer> logger) : BackgroundService
{
    static readonly TimeSpan PruneEvery = TimeSpan.FromMinutes(1);

    /// <summary>The event ids of keyed ratings (QualityApi.KeyedEventId): the same key always gives the same id.</summary>
    internal const string KeyedPrefix = "qe_k";
    DateTimeOffset _nextPrune = DateTimeOffset.MinValue;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                if (time.GetUtcNow() >= _nextPrune)
                {
                    _nextPrune = time.GetUtcNow() + PruneEvery;
                    await PruneDeliveredAsync(stoppingToken);
                }

                var sent = await DeliverDueAsync(stoppingToken);
                if (sent == options.BatchSize)
                {
                    continue;
                }
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex)
            {
                LogLoopError(ex.Message);
            }

            try
            {
                await signal.WaitAsync(TimeSpan.FromMilliseconds(options.PollMilliseconds), stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    /// <summary>Attempts every due row once; returns how many rows were attempted.</summary>
    public async Task<int> DeliverDueAsync(CancellationToken ct)
    {
        var due = await outbox.DueAsync(time.GetUtcNow().ToUnixTimeMilliseconds(), options.BatchSize, ct);
        foreach (var row in due)
        {
            await DeliverAsync(row, ct);
        }

        return due.Count;
    }

    /// <summary>Deletes the events delivered more than <see cref="QualityOptions.DeliveredRetentionHours"/> ago; returns how many.</summary>
    public async Task<int> PruneDeliveredAsync(CancellationToken ct)
    {
        if (options.DeliveredRetentionHours == 0)
        {
            return 0;
        }

        var before = (time.GetUtcNow() - TimeSpan.FromHours(options.DeliveredRetentionHours)).ToUnixTimeMilliseconds();
        var total = await outbox.PruneDeliveredAsync(before, ct);
        if (total > 0)
        {
            LogPruned(total, options.DeliveredRetentionHours);
        }

        return total;
    }

    async Task DeliverAsync(OutboxRow row, CancellationToken ct)
    {
        string error;
        var permanent = false;
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(options.DeliveryTimeoutMilliseconds);
            using var request = new HttpRequestMessage(HttpMethod.Post, "api/reputation/events")
            {
                Content = new StringContent(row.payload, Encoding.UTF8, "application/json"),
            };
            var token = issuer.Mint(FreesideService.Issuer, IdentitySetup.DixieAudience, new Dictionary<string, object> { ["sub"] = FreesideService.Name });
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            using var response = await clients.CreateClient(IdentitySetup.DixieClient).SendAsync(request, timeout.Token);
            if (response.IsSuccessStatusCode)
            {
                await outbox.MarkDeliveredAsync(row.event_id, time.GetUtcNow().ToUnixTimeMilliseconds(), ct);
                metrics.Delivered.Add(1);
                LogDelivered(row.event_id, row.routing_key, row.attempts + 1);
                return;
            }

            var body = await response.Content.ReadAsStringAsync(timeout.Token);
            if (response.StatusCode == HttpStatusCode.Conflict && row.event_id.StartsWith(KeyedPrefix, StringComparison.Ordinal)
                && body.Contains("\"EVENT_ID_CONFLICT\"", StringComparison.Ordinal))
            {
                // A keyed rating whose key dixie already counted: the key was used again after the outbox had pruned its
                // first event (Quality:DeliveredRetentionHours), so freeside queued it as new. The key's first rating
                // stands, as a key counts once; the row is done, not dead (nothing is wrong with the outbox or dixie).
                await outbox.MarkDeliveredAsync(row.event_id, time.GetUtcNow().ToUnixTimeMilliseconds(), ct);
                LogKeyAlreadyCounted(row.event_id, row.routing_key);
                return;
            }

            error = $"dixie answered {(int)response.StatusCode}: {body}";
            permanent = response.StatusCode is HttpStatusCode.BadRequest or HttpStatusCode.Conflict or HttpStatusCode.UnprocessableEntity;
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            throw;
        }
        catch (Exception ex) when (ex is HttpRequestException or OperationCanceledException or InvalidOperationException)
        {
            error = "dixie unreachable: " + ex.Message;
        }

        var delay = Backoff(row.attempts);
        await outbox.RescheduleAsync(row.event_id, time.GetUtcNow().ToUnixTimeMilliseconds() + (long)delay.TotalMilliseconds, error, permanent, ct);
        if (permanent)
        {
            metrics.Dead.Add(1);
            LogDead(row.event_id, error);
        }
        else
        {
            metrics.Retried.Add(1);
            LogRetry(row.event_id, row.attempts + 1, (long)delay.TotalMilliseconds, error);
        }
    }

    /// <summary>base·2^attempts capped at the maximum, times a uniform jitter in [0.5, 1.5).</summary>
    public TimeSpan Backoff(long attempts)
    {
        var raw = options.BaseBackoffMilliseconds * Math.Pow(2, Math.Min(attempts, 30));
        var capped = Math.Min(raw, options.MaxBackoffMilliseconds);
        return TimeSpan.FromMilliseconds(capped * (0.5 + Random.Shared.NextDouble()));
    }

    [LoggerMessage(EventId = 5201, EventName = "QUALITY_EVENT_DELIVERED", Level = LogLevel.Information, Message = "Quality event {EventId} for {RoutingKey} delivered to dixie after {Attempts} attempt(s)")]
    partial void LogDelivered(string eventId, string routingKey, long attempts);

    [LoggerMessage(EventId = 5202, EventName = "QUALITY_EVENT_RETRY", Level = LogLevel.Warning, Message = "Quality event {EventId} attempt {Attempts} failed; retrying in {RetryInMs} ms: {Error}")]
    partial void LogRetry(string eventId, long attempts, long retryInMs, string error);

    [LoggerMessage(EventId = 5203, EventName = "QUALITY_EVENT_DEAD", Level = LogLevel.Error, Message = "Quality event {EventId} rejected by dixie and will not be retried: {Error}")]
    partial void LogDead(string eventId, string error);

    [LoggerMessage(EventId = 5206, EventName = "QUALITY_KEY_ALREADY_COUNTED", Level = LogLevel.Warning,
        Message = "Quality event {EventId} for {RoutingKey}: its idempotency key was used again after the outbox pruned the first rating; dixie keeps the first")]
    partial void LogKeyAlreadyCounted(string eventId, string routingKey);

    [LoggerMessage(EventId = 5205, EventName = "QUALITY_OUTBOX_PRUNED", Level = LogLevel.Information, Message = "Deleted {Count} quality events delivered more than {RetentionHours} h ago")]
    partial void LogPruned(int count, int retentionHours);

    [LoggerMessage(EventId = 5204, EventName = "QUALITY_DELIVERER_ERROR", Level = LogLevel.Error, Message = "Quality deliverer loop error: {Error}")]
    partial void LogLoopError(string error);
}
