using System.Collections.Concurrent;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Arrakis.Finn.Tests.Inference;

/// <summary>One request a vendor server received: its path, headers and JSON body.</summary>
internal sealed record VendorCall(string Path, IReadOnlyDictionary<string, string> Headers, JsonElement Body)
{
    public bool Stream => Body.TryGetProperty("stream", out var s) && s.ValueKind == JsonValueKind.True;
}

/// <summary>
/// A loopback Kestrel server speaking the real OpenAI chat-completions (<c>/v1/chat/completions</c>) and Anthropic
/// Messages (<c>/v1/messages</c>) wire formats. Each test scripts its answers by call number.
/// </summary>
internal sealed class VendorServer : IAsyncDisposable
{
    readonly WebApplication _app;
    int _calls;

    VendorServer(WebApplication app, string url)
    {
        _app = app;
        Url = url;
    }

    public string Url { get; }

    public ConcurrentQueue<VendorCall> Calls { get; } = new();

    public int CallCount => Volatile.Read(ref _calls);

    /// <summary>Answers call number <c>n</c> (1-based). Defaults to a success.</summary>
    public Func<HttpContext, VendorCall, int, Task> Behavior { get; set; } = (ctx, call, _) => SuccessAsync(ctx, call, "Hello there, friend!");

    public static Task<VendorServer> StartAsync() => TestStorage.RetryOnPortClashAsync(StartOnceAsync);

    static async Task<VendorServer> StartOnceAsync()
    {
        var url = $"http://127.0.0.1:{TestStorage.FreePort()}";
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls(url);
        builder.Logging.ClearProviders();
        var app = builder.Build();
        var server = new VendorServer(app, url);
        app.MapPost("/v1/chat/completions", server.HandleAsync);
        app.MapPost("/v1/messages", server.HandleAsync);
        await app.StartAsync();
        return server;
    }

    async Task HandleAsync(HttpContext ctx)
    {
        var n = Interlocked.Increment(ref _calls);
        var body = await JsonDocument.ParseAsync(ctx.Request.Body, cancellationToken: ctx.RequestAborted);
        var call = new VendorCall(ctx.Request.Path, ctx.Request.Headers.ToDictionary(h => h.Key.ToLowerInvariant(), h => h.Value.ToString()), body.RootElement.Clone());
        Calls.Enqueue(call);
        await Behavior(ctx, call, n);
    }

    public static bool IsAnthropic(VendorCall call) => call.Path == "/v1/messages";

    /// <summary>
    /// A successful answer in the format the call asked for. <paramref name="pieceDelay"/>: the time the vendor takes per
    /// piece of text (before each delta of a stream; all of it before a JSON answer), as a long generation would.
    /// </summary>
    public static async Task SuccessAsync(HttpContext ctx, VendorCall call, string text, int inputTokens = 11, int? outputTokens = null, TimeSpan pieceDelay = default)
    {
        var pieces = Pieces(text);
        var output = outputTokens ?? pieces.Count;
        var model = call.Body.GetProperty("model").GetString();
        if (!call.Stream)
        {
            await Task.Delay(pieceDelay * pieces.Count, ctx.RequestAborted);
            JsonObject json = IsAnthropic(call)
                ? new()
                {
                    ["id"] = "msg_test", ["type"] = "message", ["role"] = "assistant", ["model"] = model,
                    ["content"] = new JsonArray(new JsonObject { ["type"] = "text", ["text"] = text }),
                    ["stop_reason"] = "end_turn", ["stop_sequence"] = null,
                    ["usage"] = new JsonObject { ["input_tokens"] = inputTokens, ["output_tokens"] = output },
                }
                : new()
                {
                    ["id"] = "chatcmpl-test", ["object"] = "chat.completion", ["created"] = 1_700_000_000, ["model"] = model,
                    ["choices"] = new JsonArray(new JsonObject
                    {
                        ["index"] = 0, ["message"] = new JsonObject { ["role"] = "assistant", ["content"] = text }, ["finish_reason"] = "stop",
                    }),
                    ["usage"] = new JsonObject { ["prompt_tokens"] = inputTokens, ["completion_tokens"] = output, ["total_tokens"] = inputTokens + output },
                };
            ctx.Response.ContentType = "application/json";
            await ctx.Response.WriteAsync(json.ToJsonString());
            return;
        }

        ctx.Response.ContentType = "text/event-stream";
        if (IsAnthropic(call))
        {
            await EventAsync(ctx, "message_start", new JsonObject
            {
                ["type"] = "message_start",
                ["message"] = new JsonObject
                {
                    ["id"] = "msg_test", ["type"] = "message", ["role"] = "assistant", ["content"] = new JsonArray(), ["model"] = model,
                    ["stop_reason"] = null, ["usage"] = new JsonObject { ["input_tokens"] = inputTokens, ["output_tokens"] = 1 },
                },
            });
            await EventAsync(ctx, "content_block_start", new JsonObject { ["type"] = "content_block_start", ["index"] = 0, ["content_block"] = new JsonObject { ["type"] = "text", ["text"] = "" } });
            await EventAsync(ctx, "ping", new JsonObject { ["type"] = "ping" });
            foreach (var piece in pieces)
            {
                await Task.Delay(pieceDelay, ctx.RequestAborted);
                await EventAsync(ctx, "content_block_delta", new JsonObject
                {
                    ["type"] = "content_block_delta", ["index"] = 0, ["delta"] = new JsonObject { ["type"] = "text_delta", ["text"] = piece },
                });
            }

            await EventAsync(ctx, "content_block_stop", new JsonObject { ["type"] = "content_block_stop", ["index"] = 0 });
            await EventAsync(ctx, "message_delta", new JsonObject
            {
                ["type"] = "message_delta", ["delta"] = new JsonObject { ["stop_reason"] = "end_turn", ["stop_sequence"] = null },
                ["usage"] = new JsonObject { ["output_tokens"] = output },
            });
            await EventAsync(ctx, "message_stop", new JsonObject { ["type"] = "message_stop" });
            return;
        }

        JsonObject Chunk(JsonObject delta, string? finish) => new()
        {
            ["id"] = "chatcmpl-test", ["object"] = "chat.completion.chunk", ["created"] = 1_700_000_000, ["model"] = model,
            ["choices"] = new JsonArray(new JsonObject { ["index"] = 0, ["delta"] = delta, ["finish_reason"] = finish }),
        };
        await EventAsync(ctx, null, Chunk(new JsonObject { ["role"] = "assistant", ["content"] = "" }, null));
        foreach (var piece in pieces)
        {
            await Task.Delay(pieceDelay, ctx.RequestAborted);
            await EventAsync(ctx, null, Chunk(new JsonObject { ["content"] = piece }, null));
        }

        await EventAsync(ctx, null, Chunk(new JsonObject(), "stop"));
        var includeUsage = call.Body.TryGetProperty("stream_options", out var so) && so.TryGetProperty("include_usage", out var iu) && iu.GetBoolean();
        if (includeUsage)
        {
            await EventAsync(ctx, null, new JsonObject
            {
                ["id"] = "chatcmpl-test", ["object"] = "chat.completion.chunk", ["model"] = model, ["choices"] = new JsonArray(),
                ["usage"] = new JsonObject { ["prompt_tokens"] = inputTokens, ["completion_tokens"] = output, ["total_tokens"] = inputTokens + output },
            });
        }

        await ctx.Response.WriteAsync("data: [DONE]\n\n");
    }

    public static async Task ErrorAsync(HttpContext ctx, VendorCall call, int status, string? retryAfter = null)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        if (retryAfter is not null)
        {
            ctx.Response.Headers.RetryAfter = retryAfter;
        }

        var type = status == 429 ? "rate_limit_error" : "api_error";
        var body = IsAnthropic(call)
            ? new JsonObject { ["type"] = "error", ["error"] = new JsonObject { ["type"] = type, ["message"] = "vendor says " + status } }
            : new JsonObject { ["error"] = new JsonObject { ["message"] = "vendor says " + status, ["type"] = type, ["code"] = status == 429 ? "rate_limit_exceeded" : null } };
        await ctx.Response.WriteAsync(body.ToJsonString());
    }

    public static async Task HangAsync(HttpContext ctx)
    {
        try
        {
            await Task.Delay(TimeSpan.FromSeconds(30), ctx.RequestAborted);
        }
        catch (OperationCanceledException)
        {
        }
    }

    static async Task EventAsync(HttpContext ctx, string? name, JsonObject data)
    {
        var frame = (name is null ? "" : $"event: {name}\n") + $"data: {data.ToJsonString()}\n\n";
        await ctx.Response.WriteAsync(frame);
        await ctx.Response.Body.FlushAsync();
    }

    static List<string> Pieces(string text)
    {
        var pieces = new List<string>();
        for (var i = 0; i < text.Length; i += 4)
        {
            pieces.Add(text.Substring(i, Math.Min(4, text.Length - i)));
        }

        return pieces;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
