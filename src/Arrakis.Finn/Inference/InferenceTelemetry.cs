using System.Diagnostics.Metrics;
using Microsoft.Extensions.Logging;

namespace Arrakis.Finn.Inference;

/// <summary>finn's provider metrics (meter <c>Arrakis.Finn</c>).</summary>
public sealed class InferenceMetrics
{
    public const string MeterName = "Arrakis.Finn";
    readonly Histogram<double> _latency;
    readonly Counter<long> _errors;
    readonly Counter<long> _tokens;

    public InferenceMetrics(IMeterFactory meters)
    {
        var meter = meters.Create(MeterName);
        _latency = meter.CreateHistogram<double>("finn_provider_latency_ms", "ms", "Duration of one provider call");
        _errors = meter.CreateCounter<long>("finn_provider_errors", "{error}", "Failed provider calls by kind");
        _tokens = meter.CreateCounter<long>("finn_tokens", "{token}", "Tokens metered by pool and direction");
    }

    public void Call(string pool, string model, string provider, string outcome, double ms) =>
        _latency.Record(ms, new("pool", pool), new("model", model), new("provider", provider), new("outcome", outcome));

    public void Error(string pool, string model, string provider, string kind) =>
        _errors.Add(1, new("pool", pool), new("model", model), new("provider", provider), new("kind", kind));

    public void Tokens(string pool, long input, long output)
    {
        _tokens.Add(input, new("pool", pool), new("direction", "input"));
        _tokens.Add(output, new("pool", pool), new("direction", "output"));
    }
}

internal static partial class InferenceLog
{
    [LoggerMessage(EventId = 4001, EventName = "PROVIDER_CALL", Level = LogLevel.Information,
        Message = "PROVIDER_CALL pool={Pool} model={Model} provider={Provider} attempt={Attempt} outcome={Outcome} duration_ms={DurationMs} prompt_tokens={PromptTokens} completion_tokens={CompletionTokens} trace_id={TraceId}")]
    public static partial void Call(ILogger logger, string pool, string model, string provider, int attempt, string outcome, long durationMs, long promptTokens, long completionTokens, string traceId);

    [LoggerMessage(EventId = 4002, EventName = "PROVIDER_FAILED", Level = LogLevel.Warning,
        Message = "PROVIDER_FAILED pool={Pool} model={Model} provider={Provider} attempt={Attempt} kind={Kind} duration_ms={DurationMs} trace_id={TraceId}: {Detail}")]
    public static partial void Failed(ILogger logger, string pool, string model, string provider, int attempt, string kind, long durationMs, string traceId, string detail);

    [LoggerMessage(EventId = 4003, EventName = "BREAKER_OPENED", Level = LogLevel.Warning, Message = "BREAKER_OPENED model={Model} pool={Pool}")]
    public static partial void BreakerOpened(ILogger logger, string model, string pool);

    [LoggerMessage(EventId = 4004, EventName = "FINN_INVOKE", Level = LogLevel.Information,
        Message = "FINN_INVOKE pool={Pool} model={Model} outcome={Outcome} duration_ms={DurationMs} cost_micro={CostMicro} stream={Stream} trace_id={TraceId} community_id={CommunityId}")]
    public static partial void Invoke(ILogger logger, string pool, string model, string outcome, long durationMs, long costMicro, bool stream, string traceId, string communityId);
}
