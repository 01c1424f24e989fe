using System.Net.Http.Headers;
using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Arrakis.Shared.Contracts;
using Microsoft.Extensions.Options;

namespace Arrakis.Finn.Inference.Providers;

/// <summary><c>Providers:OpenAI</c>: any OpenAI-compatible server (OpenAI, OpenRouter, vLLM, Ollama, llama.cpp).</summary>
public sealed class OpenAiProviderOptions
{
    public const string Section = "Providers:OpenAI";

    /// <summary>Base URL including the version segment; requests go to <c>{BaseUrl}/chat/completions</c>.</summary>
    public string BaseUrl { get; set; } = "https://api.openai.com/v1";

    /// <summary>Bearer key; falls back to the <c>OPENAI_API_KEY</c> environment variable. Optional for local servers.</summary>
    public string? ApiKey { get; set; }

    /// <summary><c>max_tokens</c> (most servers) or <c>max_completion_tokens</c> (newer OpenAI models).</summary>
    public string MaxTokensField { get; set; } = "max_tokens";

    /// <summary>
    /// Ask a stream for its usage (<c>stream_options.include_usage</c>). Servers that refuse the field (older
    /// OpenAI-compatible servers, some Azure deployments) answer 400; with false it is not sent, and a stream that
    /// reports no usage is counted with finn's tokenizer.
    /// </summary>
    public bool StreamUsage { get; set; } = true;
}

/// <summary>The OpenAI chat-completions wire format, JSON and SSE (<c>data: {...}</c> … <c>data: [DONE]</c>).</summary>
public sealed class OpenAiProvider(IHttpClientFactory clients, IOptions<OpenAiProviderOptions> options) : IInferenceProvider
{
    public const string HttpClientName = "provider-openai";
    const string Vendor = "openai";
    readonly OpenAiProviderOptions _options = options.Value;

    public string Name => Vendor;

    public bool Simulated => false;

    public bool StreamReportsUsage => _options.StreamUsage;

    public async IAsyncEnumerable<ProviderChunk> StreamAsync(ProviderRequest request, [EnumeratorCancellation] CancellationToken ct)
    {
        var body = new JsonObject
        {
            ["model"] = request.Model.VendorModel ?? request.Model.Id,
            ["messages"] = new JsonArray(request.Messages.Select(m => (JsonNode)new JsonObject { ["role"] = m.Role, ["content"] = m.Content }).ToArray()),
            [_options.MaxTokensField] = request.MaxTokens,
            ["stream"] = request.Stream,
        };
        if (request.Stream && _options.StreamUsage)
        {
            body["stream_options"] = new JsonObject { ["include_usage"] = true };
        }

        var key = string.IsNullOrWhiteSpace(_options.ApiKey) ? Environment.GetEnvironmentVariable("OPENAI_API_KEY") : _options.ApiKey;
        var url = new Uri(_options.BaseUrl.TrimEnd('/') + "/chat/completions");
        using var response = await VendorHttp.SendAsync(clients.CreateClient(HttpClientName), Vendor, url, body, h =>
        {
            if (!string.IsNullOrWhiteSpace(key))
            {
                h.Authorization = new AuthenticationHeaderValue("Bearer", key);
            }
        }, request.Stream, ct);

        if (!request.Stream)
        {
            var json = await VendorHttp.ReadJsonAsync(response, Vendor, ct);
            if (!json.TryGetProperty("choices", out var choices) || choices.ValueKind != JsonValueKind.Array || choices.GetArrayLength() == 0)
            {
                throw ReportedError(null, json, generating: false) ?? new UpstreamException(UpstreamFailure.Malformed, "openai answered without choices");
            }

            var choice = choices[0];
            // content is nullable on the wire: a reasoning model that spent max_tokens thinking (vLLM's reasoning parser)
            // answers null, which is an empty answer, as the same answer streamed is, not a malformed one.
            if (VendorHttp.Object(choice, "message") is not { } message
                || (message.TryGetProperty("content", out var raw) && raw.ValueKind is not (JsonValueKind.String or JsonValueKind.Null)))
            {
                throw new UpstreamException(UpstreamFailure.Malformed, "openai answered without a choices[0].message with a string content");
            }

            var content = VendorHttp.String(message, "content") ?? "";

            yield return new ProviderChunk(content);
            yield return new ProviderChunk(null, UsageOf(VendorHttp.Object(json, "usage"), request, content), VendorHttp.String(choice, "finish_reason") ?? "stop");
            yield break;
        }

        var text = new System.Text.StringBuilder();
        JsonElement? usage = null;
        string? finish = null;
        var done = false;
        var generating = false; // a chunk came: the server accepted the request
        await using var events = VendorHttp.ReadEventsAsync(response, ct).GetAsyncEnumerator(ct);
        // Finished at the finish_reason (the usage chunk and [DONE] may still follow); the counts so far are the last usage.
        while (await VendorHttp.NextEventAsync(events, finish is not null, () => UsageOf(usage, request, text.ToString())))
        {
            var e = events.Current;
            if (e.Data == "[DONE]")
            {
                done = true;
                break;
            }

            var json = VendorHttp.ParseEventData(e, Vendor);
            if (ReportedError(e, json, generating) is { } error)
            {
                throw error;
            }

            generating = true;

            // Read at the end, against all the streamed text: a usage chunk may leave out a count.
            usage = VendorHttp.Object(json, "usage") ?? usage;

            string? piece = null;
            if (json.TryGetProperty("choices", out var choices) && choices.ValueKind == JsonValueKind.Array && choices.GetArrayLength() > 0)
            {
                var choice = choices[0];
                finish = VendorHttp.String(choice, "finish_reason") ?? finish;
                if (VendorHttp.Object(choice, "delta") is { } delta && VendorHttp.String(delta, "content") is { Length: > 0 } content)
                {
                    piece = content;
                    text.Append(piece);
                }
            }

            // A chunk without content (a reasoning model's reasoning_content or reasoning delta, a role or filter chunk)
            // still shows the vendor is generating: passed on without a delta, it restarts the attempt's idle timer.
            yield return new ProviderChunk(piece);
        }

        if (!done && finish is null)
        {
            throw new UpstreamException(UpstreamFailure.Malformed, "openai's stream ended before [DONE]")
            {
                PartialUsage = UsageOf(usage, request, text.ToString()),
            };
        }

        yield return new ProviderChunk(null, UsageOf(usage, request, text.ToString()), finish ?? "stop");
    }

    /// <summary>
    /// The failure an OpenAI-compatible server reports in a 200 body or stream, in its own shape, or null: OpenAI's,
    /// vLLM's and llama.cpp's <c>{"error":{"message","type","code"}}</c>, older vLLM's
    /// <c>{"object":"error","message","type","code"}</c>, older llama.cpp's <c>error: {"code","message","type"}</c> line,
    /// TGI's <c>{"error":"…","error_type":"…"}</c>. A 4xx code before the first chunk is about the request, as the same
    /// status over HTTP is (vLLM checks a request as its stream starts): not retried, no breaker failure. Once the server
    /// has sent a chunk it had accepted the request, so a failure is its own whatever the code: vLLM reports its own
    /// faults mid-stream as 400 too (a RuntimeError; in older versions, every exception).
    /// </summary>
    static UpstreamException? ReportedError(SseEvent? e, JsonElement json, bool generating)
    {
        int? status;
        string? message;
        if (VendorHttp.Object(json, "error") is { } error)
        {
            status = (int?)VendorHttp.Long(error, "code");
            message = VendorHttp.String(error, "message");
        }
        else if (VendorHttp.String(json, "error") is { } tgi)
        {
            status = VendorHttp.String(json, "error_type") switch
            {
                "validation" or "template_error" or "tool_error" or "missing_template_variable" => 422,
                "overloaded" => 429,
                _ => 500,
            };
            message = tgi;
        }
        else if (VendorHttp.String(json, "object") == "error" || e?.Event == "error")
        {
            status = (int?)VendorHttp.Long(json, "code");
            message = VendorHttp.String(json, "message");
        }
        else
        {
            return null;
        }

        message ??= "unknown";
        if (!generating && status is >= 400 and < 500 and not 429)
        {
            var rejected = UpstreamException.FromStatus(status.Value, Vendor, message, null);
            return new UpstreamException(rejected.Failure, $"openai reported an error ({status}): {message}") { AboutTheRequest = rejected.AboutTheRequest };
        }

        return new UpstreamException(status == 429 ? UpstreamFailure.RateLimited : UpstreamFailure.ServerError,
            status is null ? "openai reported an error: " + message : $"openai reported an error ({status}): {message}");
    }

    /// <summary>The vendor's counts, each one it left out estimated from the prompt or the generated content.</summary>
    static Usage UsageOf(JsonElement? usage, ProviderRequest request, string content) => new(
        (usage is { } u ? VendorHttp.Long(u, "prompt_tokens") : null) ?? Tokenizer.PromptTokens(request.Messages),
        (usage is { } v ? VendorHttp.Long(v, "completion_tokens") : null) ?? Tokenizer.Count(content));

    /// <summary>When a server reports no usage, count with the local tokenizer rather than charge nothing.</summary>
    internal static Usage Estimate(ProviderRequest request, string content) =>
        new(Tokenizer.PromptTokens(request.Messages), Tokenizer.Count(content));
}
