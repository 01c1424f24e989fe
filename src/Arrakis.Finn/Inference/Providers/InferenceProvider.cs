using Arrakis.Shared.Contracts;

namespace Arrakis.Finn.Inference.Providers;

/// <summary>One call to a provider: the model, the conversation, the output cap and whether to stream from the vendor.</summary>
public sealed record ProviderRequest(PoolModel Model, IReadOnlyList<ChatMessage> Messages, int MaxTokens, bool Stream, string TraceId);

/// <summary>
/// A piece of a provider's answer: a content delta, and/or the final usage and finish reason; or neither, when the vendor
/// sent something that is not content (reasoning, a role or filter chunk), which shows it is still generating.
/// </summary>
public sealed record ProviderChunk(string? Delta, Usage? Usage = null, string? FinishReason = null);

/// <summary>
/// A model vendor behind one shape: every provider streams deltas and ends with one chunk carrying usage.
/// Failures surface as <see cref="UpstreamException"/>.
/// </summary>
public interface IInferenceProvider
{
    /// <summary><c>local</c>, <c>openai</c> or <c>anthropic</c>; matches <see cref="PoolModel.Provider"/>.</summary>
    string Name { get; }

    /// <summary>True for the built-in simulator, so results say <c>simulated:true</c>.</summary>
    bool Simulated { get; }

    /// <summary>Whether a streamed answer reports the vendor's exact usage (else finn's tokenizer estimates it).</summary>
    bool StreamReportsUsage => true;

    IAsyncEnumerable<ProviderChunk> StreamAsync(ProviderRequest request, CancellationToken ct);
}

/// <summary>The ways an upstream call fails; mapped to HTTP statuses in one place (<see cref="UpstreamFailures"/>).</summary>
public enum UpstreamFailure
{
    /// <summary>Vendor answered 429.</summary>
    RateLimited,

    /// <summary>Vendor answered 5xx (or an in-stream overload/server error).</summary>
    ServerError,

    /// <summary>No answer (or no next chunk) within the attempt timeout.</summary>
    Timeout,

    /// <summary>The vendor's body could not be understood.</summary>
    Malformed,

    /// <summary>Vendor answered another 4xx (bad key, bad request); not retried on the same model.</summary>
    Rejected,

    /// <summary>The vendor could not be reached (connection refused, DNS).</summary>
    Unreachable,

    /// <summary>No candidate model was healthy.</summary>
    NoHealthyModel,
}

public sealed class UpstreamException(UpstreamFailure failure, string message, TimeSpan? retryAfter = null, Exception? inner = null)
    : Exception(message, inner)
{
    public UpstreamFailure Failure { get; } = failure;

    /// <summary>The vendor's <c>Retry-After</c>, when it sent one.</summary>
    public TimeSpan? RetryAfter { get; } = retryAfter;

    /// <summary>Usage generated before a mid-stream failure (so the caller can charge what was streamed).</summary>
    public Usage? PartialUsage { get; init; }

    /// <summary>
    /// The vendor refused this request itself (400, 413, 422: too long for the model's context, a content filter, an
    /// invalid parameter). That says nothing about the model's health, so it does not count against its breaker:
    /// otherwise a few callers with oversized prompts would take the model away from everyone.
    /// </summary>
    public bool AboutTheRequest { get; init; }

    public static UpstreamException FromStatus(int status, string vendor, string body, TimeSpan? retryAfter)
    {
        var snippet = body.Length > 200 ? body[..200] : body;
        var failure = status switch
        {
            429 => UpstreamFailure.RateLimited,
            408 => UpstreamFailure.Timeout,
            >= 500 => UpstreamFailure.ServerError,
            _ => UpstreamFailure.Rejected,
        };
        return new UpstreamException(failure, $"{vendor} answered {status}: {snippet}", retryAfter) { AboutTheRequest = status is 400 or 413 or 422 };
    }
}

public static class UpstreamFailures
{
    public static bool Retryable(UpstreamFailure f) =>
        f is UpstreamFailure.RateLimited or UpstreamFailure.ServerError or UpstreamFailure.Timeout or UpstreamFailure.Unreachable;

    /// <summary>The one mapping from upstream failures to HTTP status and error code.</summary>
    public static (int Status, string Code) ToHttp(UpstreamFailure f) => f switch
    {
        UpstreamFailure.Timeout => (504, "PROVIDER_TIMEOUT"),
        UpstreamFailure.NoHealthyModel => (503, "NO_HEALTHY_MODEL"),
        _ => (502, "PROVIDER_ERROR"),
    };

    public static string Kind(UpstreamFailure f) => f switch
    {
        UpstreamFailure.RateLimited => "rate_limited",
        UpstreamFailure.ServerError => "server_error",
        UpstreamFailure.Timeout => "timeout",
        UpstreamFailure.Malformed => "malformed",
        UpstreamFailure.Rejected => "rejected",
        UpstreamFailure.Unreachable => "unreachable",
        _ => "no_healthy_model",
    };
}
