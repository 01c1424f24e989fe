using System.Text.Json.Serialization;

namespace Arrakis.Shared.Contracts;

public sealed record ChatMessage(
    [property: JsonPropertyName("role")] string Role,
    [property: JsonPropertyName("content")] string Content);

/// <summary>freeside → finn: <c>POST /api/v1/invoke</c>. The finn token carries <c>req_hash</c> of these exact bytes.</summary>
public sealed record FinnInvokeRequest(
    [property: JsonPropertyName("messages")] IReadOnlyList<ChatMessage> Messages,
    [property: JsonPropertyName("pool")] string Pool,
    [property: JsonPropertyName("max_tokens")] int MaxTokens,
    [property: JsonPropertyName("agent")] string? Agent,
    [property: JsonPropertyName("stream")] bool Stream,
    [property: JsonPropertyName("trace_id")] string TraceId);

public sealed record Usage(
    [property: JsonPropertyName("prompt_tokens")] long PromptTokens,
    [property: JsonPropertyName("completion_tokens")] long CompletionTokens);

/// <summary>How finn chose the model: <c>mode</c> disabled|shadow|enabled, why, what, and the scores it saw.</summary>
public sealed record RoutingInfo(
    [property: JsonPropertyName("mode")] string Mode,
    [property: JsonPropertyName("reason")] string Reason,
    [property: JsonPropertyName("chosen")] string Chosen,
    [property: JsonPropertyName("scores")] IReadOnlyDictionary<string, double?> Scores);

/// <summary>finn → freeside: the result of one invoke (the JSON body, or the final SSE <c>done</c> frame).</summary>
public sealed record FinnInvokeResult(
    [property: JsonPropertyName("content")] string Content,
    [property: JsonPropertyName("model")] string Model,
    [property: JsonPropertyName("pool")] string Pool,
    [property: JsonPropertyName("provider")] string Provider,
    [property: JsonPropertyName("usage")] Usage Usage,
    [property: JsonPropertyName("cost_micro")] long CostMicro,
    [property: JsonPropertyName("finish_reason")] string FinishReason,
    [property: JsonPropertyName("routing")] RoutingInfo Routing,
    [property: JsonPropertyName("simulated")] bool Simulated);

/// <summary>
/// SSE frames finn streams: <c>event: delta</c> with <see cref="FinnDelta"/> (its optional <c>usage</c> is the running
/// total so far, so a caller that stops early can charge exactly what was streamed), then exactly one <c>event: done</c> with
/// <see cref="FinnInvokeResult"/>, or <c>event: error</c> with a problem-details object.
/// </summary>
public sealed record FinnDelta(
    [property: JsonPropertyName("content")] string Content,
    [property: JsonPropertyName("usage")] Usage? Usage = null);

public static class FinnContract
{
    public const string InvokePath = "api/v1/invoke";
    public const string DeltaEvent = "delta";
    public const string DoneEvent = "done";
    public const string ErrorEvent = "error";

    /// <summary>
    /// The largest invoke body finn reads by default (<c>Inference:MaxBodyBytes</c>). Freeside refuses a request whose
    /// finn body would not fit, before it reserves or quotes anything, rather than meet finn's 413 as a 502.
    /// </summary>
    public const int MaxBodyBytes = 1 << 20;

    /// <summary>What a finn body may hold besides its messages (pool, agent, trace id, max_tokens, stream, punctuation).</summary>
    public const int MaxBodyOverheadBytes = 4096;

    /// <summary><c>sha256:&lt;hex&gt;</c> of the exact request body bytes.</summary>
    public static string RequestHash(ReadOnlySpan<byte> body) =>
        "sha256:" + Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(body));
}
