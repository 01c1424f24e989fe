using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Arrakis.Shared.Contracts;
using Microsoft.Extensions.Options;

namespace Arrakis.Finn.Inference.Providers;

/// <summary><c>Providers:Anthropic</c>: the Messages API.</summary>
public sealed class AnthropicProviderOptions
{
    public const string Section = "Providers:Anthropic";

    /// <summary>Base URL without the version; requests go to <c>{BaseUrl}/v1/messages</c>.</summary>
    public string BaseUrl { get; set; } = "https://api.anthropic.com";

    /// <summary><c>x-api-key</c>; falls back to the <c>ANTHROPIC_API_KEY</c> environment variable.</summary>
    public string? ApiKey { get; set; }

    public string Version { get; set; } = "2023-06-01";
}

/// <summary>
/// The Anthropic Messages wire format, JSON and SSE (<c>message_start</c>, <c>content_block_delta</c>,
/// <c>message_delta</c>, <c>message_stop</c>, and in-stream <c>error</c>).
/// </summary>
public sealed class AnthropicProvider(IHttpClientFactory clients, IOptions<AnthropicProviderOptions> options) : IInferenceProvider
{
    public const string HttpClientName = "provider-anthropic";
    const string Vendor = "anthropic";
    readonly AnthropicProviderOptions _options = options.Value;

    public string Name => Vendor;

    public bool Simulated => false;

    public async IAsyncEnumerable<ProviderChunk> StreamAsync(ProviderRequest request, [EnumeratorCancellation] CancellationToken ct)
    {
        var system = string.Join("\n\n", request.Messages.Where(m => m.Role == "system").Select(m => m.Content));
        var body = new JsonObject
        {
            ["model"] = request.Model.VendorModel ?? request.Model.Id,
            ["max_tokens"] = request.MaxTokens,
            ["messages"] = new JsonArray(request.Messages.Where(m => m.Role != "system")
                .Select(m => (JsonNode)new JsonObject { ["role"] = m.Role, ["content"] = m.Content }).ToArray()),
            ["stream"] = request.Stream,
        };
        if (system.Length > 0)
        {
            body["system"] = system;
        }

        var key = string.IsNullOrWhiteSpace(_options.ApiKey) ? Environment.GetEnvironmentVariable("ANTHROPIC_API_KEY") : _options.ApiKey;
        var url = new Uri(_options.BaseUrl.TrimEnd('/') + "/v1/messages");
        using var response = await VendorHttp.SendAsync(clients.CreateClient(HttpClientName), Vendor, url, body, h =>
        {
            if (!string.IsNullOrWhiteSpace(key))
            {
                h.Add("x-api-key", key);
            }

            h.Add("anthropic-version", _options.Version);
        }, request.Stream, ct);

        if (!request.Stream)
        {
            var json = await VendorHttp.ReadJsonAsync(response, Vendor, ct);
            if (!json.TryGetProperty("content", out var blocks) || blocks.ValueKind != JsonValueKind.Array)
            {
                throw new UpstreamException(UpstreamFailure.Malformed, "anthropic answered without a content array");
            }

            var content = string.Concat(blocks.EnumerateArray().Where(b => VendorHttp.String(b, "type") == "text").Select(b => VendorHttp.String(b, "text") ?? ""));
            yield return new ProviderChunk(content);
            var usage = VendorHttp.Object(json, "usage") is { } u && VendorHttp.Long(u, "input_tokens") is { } i && VendorHttp.Long(u, "output_tokens") is { } o
                ? new Usage(i, o)
                : OpenAiProvider.Estimate(request, content);
            yield return new ProviderChunk(null, usage, Finish(VendorHttp.String(json, "stop_reason")));
            yield break;
        }

        var text = new System.Text.StringBuilder();
        long? input = null;
        long? startOutput = null; // message_start's count is a lower bound (usually 1), not what was generated
        long? output = null; // message_delta's cumulative count
        string? stop = null;
        var stopped = false;
        await using var events = VendorHttp.ReadEventsAsync(response, ct).GetAsyncEnumerator(ct);
        // Finished at message_delta's stop_reason; the counts so far are message_start's input and message_delta's output.
        while (await VendorHttp.NextEventAsync(events, stop is not null, () => Partial(request, input, output, text.ToString())))
        {
            var e = events.Current;
            var json = VendorHttp.ParseEventData(e, Vendor);
            var name = e.Event ?? VendorHttp.String(json, "type");
            string? piece = null;
            switch (name)
            {
                case "message_start":
                    if (VendorHttp.Object(json, "message") is { } message && VendorHttp.Object(message, "usage") is { } startUsage)
                    {
                        input = VendorHttp.Long(startUsage, "input_tokens") ?? input;
                        startOutput = VendorHttp.Long(startUsage, "output_tokens") ?? startOutput;
                    }

                    break;
                case "content_block_delta":
                    if (VendorHttp.Object(json, "delta") is { } delta && VendorHttp.String(delta, "type") == "text_delta"
                        && VendorHttp.String(delta, "text") is { Length: > 0 } content)
                    {
                        piece = content;
                        text.Append(piece);
                    }

                    break;
                case "message_delta":
                    if (VendorHttp.Object(json, "delta") is { } md)
                    {
                        stop = VendorHttp.String(md, "stop_reason") ?? stop;
                    }

                    if (VendorHttp.Object(json, "usage") is { } deltaUsage)
                    {
                        output = VendorHttp.Long(deltaUsage, "output_tokens") ?? output;
                        input = VendorHttp.Long(deltaUsage, "input_tokens") ?? input;
                    }

                    break;
                case "message_stop":
                    stopped = true;
                    break;
                case "error":
                    var error = VendorHttp.Object(json, "error");
                    var type = error is { } err ? VendorHttp.String(err, "type") : null;
                    throw new UpstreamException(
                        type == "rate_limit_error" ? UpstreamFailure.RateLimited : UpstreamFailure.ServerError,
                        "anthropic streamed an error: " + (type ?? "unknown") + " " + (error is { } er ? VendorHttp.String(er, "message") : null))
                    {
                        PartialUsage = Partial(request, input, output, text.ToString()),
                    };
            }

            // Any event but the keep-alive ping (a thinking_delta too) shows the vendor is generating: passed on without
            // a delta, it restarts the attempt's idle timer.
            if (name != "ping")
            {
                yield return new ProviderChunk(piece);
            }

            if (stopped)
            {
                break;
            }
        }

        // message_delta's stop_reason ends the answer (message_stop carries nothing more), as finish_reason does for OpenAI.
        if (!stopped && stop is null)
        {
            throw new UpstreamException(UpstreamFailure.Malformed, "anthropic's stream ended before message_stop")
            {
                PartialUsage = Partial(request, input, output, text.ToString()),
            };
        }

        var estimate = OpenAiProvider.Estimate(request, text.ToString());
        yield return new ProviderChunk(null, new Usage(input ?? estimate.PromptTokens, output ?? Math.Max(startOutput ?? 0, estimate.CompletionTokens)), Finish(stop));
    }

    /// <summary>What a broken stream generated: the streamed text's count, or the vendor's running count when that is higher.</summary>
    static Usage Partial(ProviderRequest request, long? input, long? output, string text) =>
        new(input ?? Tokenizer.PromptTokens(request.Messages), Math.Max(output ?? 0, Tokenizer.Count(text)));

    static string Finish(string? stopReason) => stopReason switch
    {
        "max_tokens" => "length",
        null => "stop",
        _ => "stop",
    };
}
