using System.Diagnostics.Metrics;
using Microsoft.Extensions.Logging;

namespace Arrakis.Freeside.Invoke;

static partial class InvokeLog
{
    /// <summary>One line per invoke; the CloudWatch JSON filter reads <c>$.duration_ms</c> from it.</summary>
    [LoggerMessage(EventId = 4001, EventName = "INVOKE_COMPLETE", Level = LogLevel.Information,
        Message = "INVOKE_COMPLETE status={Status} outcome={Outcome} pool={Pool} model={Model} community={CommunityId} trace={TraceId} cost_micro={CostMicro} tokens={PromptTokens}/{CompletionTokens} stream={Stream} duration_ms={DurationMs}")]
    public static partial void InvokeComplete(this ILogger logger, int status, string outcome, string? pool, string? model, long durationMs,
        string communityId, string traceId, long costMicro, long promptTokens, long completionTokens, bool stream);

    [LoggerMessage(EventId = 4002, EventName = "INVOKE_UPSTREAM_FAILED", Level = LogLevel.Warning,
        Message = "Invoke failed upstream: {Error} {Detail} trace={TraceId} community={CommunityId}")]
    public static partial void UpstreamFailed(this ILogger logger, string error, string detail, string traceId, string communityId);

    /// <summary>
    /// The finalize did not post: an outcome of the ledger's (the reservation was no longer pending), or
    /// <see cref="WriteFailed"/> with the exception when its write failed and the reservation was released instead.
    /// </summary>
    [LoggerMessage(EventId = 4003, EventName = "INVOKE_FINALIZE_FAILED", Level = LogLevel.Error,
        Message = "Finalize of reservation {ReservationId} returned {Outcome} trace={TraceId}")]
    public static partial void FinalizeFailed(this ILogger logger, string reservationId, string outcome, string traceId, Exception? exception);

    public const string WriteFailed = "WriteFailed";

    [LoggerMessage(EventId = 4004, EventName = "INVOKE_RELEASE_FAILED", Level = LogLevel.Error,
        Message = "Releasing the {What} {Id} failed; it is tried again once the database answers (when it was unreachable), else the reaper or the key's lease frees it trace={TraceId}")]
    public static partial void ReleaseFailed(this ILogger logger, string what, string id, string traceId, Exception exception);

    [LoggerMessage(EventId = 4005, EventName = "INVOKE_UNEXPECTED_ERROR", Level = LogLevel.Error,
        Message = "Unexpected error while calling finn for reservation {ReservationId}; the call is failed and its hold released trace={TraceId}")]
    public static partial void UnexpectedError(this ILogger logger, string reservationId, string traceId, Exception exception);
}

/// <summary>Invoke metrics under the names the dashboards read (meter <c>Arrakis.Agent</c>).</summary>
public sealed class InvokeMetrics
{
    public const string MeterName = Shared.Hosting.MetricNames.AgentMeter;
    readonly Histogram<double> _latency;
    readonly Counter<long> _count;
    readonly Histogram<long> _cost;

    public InvokeMetrics(IMeterFactory meters)
    {
        var meter = meters.Create(MeterName);
        _latency = meter.CreateHistogram<double>(Shared.Hosting.MetricNames.InferenceLatencyMs, "ms", "End-to-end invoke latency at freeside",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000, 30000] });
        _count = meter.CreateCounter<long>(Shared.Hosting.MetricNames.InvocationCount, "{invocation}", "Invokes by outcome");
        _cost = meter.CreateHistogram<long>(Shared.Hosting.MetricNames.InvocationCostMicro, "{micro_usd}", "Metered cost charged per invoke");
    }

    public void Completed(string? pool, string outcome, double ms, long costMicro)
    {
        var poolTag = new KeyValuePair<string, object?>("pool", pool ?? "none");
        _latency.Record(ms, poolTag);
        _count.Add(1, poolTag, new KeyValuePair<string, object?>("outcome", outcome));
        if (costMicro > 0)
        {
            _cost.Record(costMicro, poolTag);
        }
    }
}
