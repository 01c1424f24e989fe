using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Arrakis.Finn.Identity;
using Arrakis.Finn.Inference.Providers;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Http;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Arrakis.Finn.Inference;

/// <summary><c>POST /api/v1/invoke</c>: freeside's calls into finn, answered as JSON or as SSE.</summary>
public static class InferenceApi
{
    static readonly string[] Roles = ["system", "user", "assistant"];

    /// <summary>
    /// An upstream failure as a problem. "No healthy model" says when to come back (<c>Retry-After</c>, whole seconds:
    /// the soonest a breaker of the pool half-opens); a vendor's own <c>Retry-After</c> was for finn and is not passed on.
    /// </summary>
    internal static IResult UpstreamProblem(UpstreamException ex, string traceId)
    {
        var (status, code) = UpstreamFailures.ToHttp(ex.Failure);
        var headers = ex.Failure == UpstreamFailure.NoHealthyModel && ex.RetryAfter is { } wait
            ? new Dictionary<string, string> { ["Retry-After"] = ((long)Math.Ceiling(wait.TotalSeconds)).ToString(System.Globalization.CultureInfo.InvariantCulture) }
            : null;
        return Problems.Create(status, code, ex.Message, new Dictionary<string, object?> { ["trace_id"] = traceId }, headers);
    }

    public static IEndpointRouteBuilder MapInferenceApi(this IEndpointRouteBuilder app)
    {
        app.MapPost("/" + FinnContract.InvokePath, InvokeAsync)
            .RequireToken(IdentitySetup.FreesidePolicy)
            .WithName("finn-invoke");
        return app;
    }

    static async Task<IResult> InvokeAsync(HttpContext http, InferenceEngine engine, PoolCatalog catalog, IOptions<InferenceOptions> options,
        IOptions<Microsoft.AspNetCore.Http.Json.JsonOptions> json, TimeProvider time, ILogger<InferenceEngine> logger, CancellationToken ct)
    {
        var claims = TokenEndpoints.ClaimsOf(http.VerifiedToken());
        var body = await ReadBodyAsync(http.Request, options.Value.MaxBodyBytes, ct);
        if (body is null)
        {
            return Problems.Create(413, "REQUEST_TOO_LARGE", $"The request body exceeds {options.Value.MaxBodyBytes} bytes.");
        }

        var claimedHash = StringClaim(claims, "req_hash");
        var actualHash = FinnContract.RequestHash(body);
        if (claimedHash is null || !CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(claimedHash), Encoding.UTF8.GetBytes(actualHash)))
        {
            return Problems.Create(400, "REQ_HASH_MISMATCH", claimedHash is null
                ? "The token carries no req_hash claim."
                : "The token's req_hash does not match the request body.");
        }

        FinnInvokeRequest? request;
        try
        {
            // Text first: the deserializer would skip a bad string in an unknown field and blame the converter for the rest.
            using var doc = JsonDocument.Parse(body);
            if (JsonText.Check(doc.RootElement) is { } text)
            {
                return Problems.Invalid(text.Field, text.Detail);
            }

            request = doc.Deserialize<FinnInvokeRequest>();
        }
        catch (JsonException ex)
        {
            return Problems.Invalid(ex.Path is { Length: > 2 } path ? path.TrimStart('$', '.') : "body", "The body is not a valid invoke request: " + ex.Message);
        }

        if (Validate(request, catalog) is { } invalid)
        {
            return invalid;
        }

        var pool = catalog.Pools[request!.Pool];
        var tierName = StringClaim(claims, "tier");
        var allowed = ArrayClaim(claims, "allowed_pools");
        if (tierName is null || !Enum.TryParse<Tier>(tierName, ignoreCase: true, out var tier) || !catalog.TierAllows(tier, pool.Id)
            || allowed is null || !allowed.Contains(pool.Id, StringComparer.Ordinal))
        {
            return Problems.Create(403, "POOL_NOT_ALLOWED", $"Pool '{pool.Id}' is not allowed for this token (tier '{tierName ?? "none"}').",
                new Dictionary<string, object?> { ["pool"] = pool.Id });
        }

        if (request.MaxTokens > pool.MaxTokensLimit)
        {
            return Problems.Invalid("max_tokens", $"max_tokens may be at most {pool.MaxTokensLimit} for pool '{pool.Id}'.");
        }

        var traceId = string.IsNullOrWhiteSpace(request.TraceId) ? System.Diagnostics.Activity.Current?.TraceId.ToString() ?? Guid.NewGuid().ToString("N") : request.TraceId;
        request = request with { TraceId = traceId };
        var community = StringClaim(claims, "community_id") ?? "unknown";
        if (request.Stream)
        {
            return new SseInvokeResult(engine, request, pool, TimeSpan.FromSeconds(options.Value.KeepAliveSeconds), time, logger, community);
        }

        var started = time.GetTimestamp();
        FinnInvokeResult result;
        try
        {
            result = await engine.InvokeAsync(request, pool, null, ct);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            // freeside gave up on the call; nothing was delivered, so nothing to answer.
            InferenceLog.Invoke(logger, pool.Id, "none", "cancelled", (long)time.GetElapsedTime(started).TotalMilliseconds, 0, false, traceId, community);
            return Results.Empty;
        }
        catch (UpstreamException ex)
        {
            InferenceLog.Invoke(logger, pool.Id, "none", UpstreamFailures.Kind(ex.Failure), (long)time.GetElapsedTime(started).TotalMilliseconds, 0, false, traceId, community);
            return UpstreamProblem(ex, traceId);
        }

        var elapsedMs = (long)time.GetElapsedTime(started).TotalMilliseconds;
        try
        {
            // With its length, freeside has the answer as soon as it is written, before the log line.
            await JsonBody.WriteAsync(http.Response, 200, JsonSerializer.SerializeToUtf8Bytes(result, json.Value.SerializerOptions));
        }
        finally
        {
            InferenceLog.Invoke(logger, pool.Id, result.Model, "ok", elapsedMs, result.CostMicro, false, traceId, community);
        }

        return Results.Empty;
    }

    static IResult? Validate(FinnInvokeRequest? request, PoolCatalog catalog)
    {
        if (request is null)
        {
            return Problems.Invalid("body", "The body must be a JSON object.");
        }

        if (request.Messages is null || request.Messages.Count == 0)
        {
            return Problems.Invalid("messages", "messages must hold at least one {role, content} message.");
        }

        for (var i = 0; i < request.Messages.Count; i++)
        {
            var m = request.Messages[i];
            if (m is null || m.Role is null || !Roles.Contains(m.Role, StringComparer.Ordinal))
            {
                return Problems.Invalid($"messages[{i}].role", "role must be one of system, user, assistant.");
            }

            if (m.Content is null)
            {
                return Problems.Invalid($"messages[{i}].content", "content must be a string.");
            }
        }

        if (string.IsNullOrWhiteSpace(request.Pool))
        {
            return Problems.Invalid("pool", "pool is required.");
        }

        if (!catalog.Pools.ContainsKey(request.Pool))
        {
            return Problems.Invalid("pool", $"Unknown pool '{request.Pool}'.");
        }

        if (request.MaxTokens < 1)
        {
            return Problems.Invalid("max_tokens", "max_tokens must be a positive integer.");
        }

        return null;
    }

    static async Task<byte[]?> ReadBodyAsync(HttpRequest request, int limit, CancellationToken ct)
    {
        if (request.ContentLength > limit)
        {
            return null;
        }

        using var buffer = new MemoryStream();
        var chunk = new byte[16 * 1024];
        int read;
        while ((read = await request.Body.ReadAsync(chunk, ct)) > 0)
        {
            if (buffer.Length + read > limit)
            {
                return null;
            }

            buffer.Write(chunk, 0, read);
        }

        return buffer.ToArray();
    }

    static string? StringClaim(Dictionary<string, object?> claims, string name) =>
        claims.TryGetValue(name, out var v) && v is JsonElement { ValueKind: JsonValueKind.String } e ? e.GetString() : null;

    static List<string>? ArrayClaim(Dictionary<string, object?> claims, string name) =>
        claims.TryGetValue(name, out var v) && v is JsonElement e
            ? e.ValueKind switch
            {
                JsonValueKind.Array => e.EnumerateArray().Where(x => x.ValueKind == JsonValueKind.String).Select(x => x.GetString()!).ToList(),
                JsonValueKind.String => [e.GetString()!],
                _ => null,
            }
            : null;

    /// <summary>
    /// The streaming answer. Frames: <c>event: delta</c> + <c>data: {"content":"..."}</c>, then one <c>event: done</c>
    /// with the <see cref="FinnInvokeResult"/>, or <c>event: error</c> with a problem object; <c>: keepalive</c> comments
    /// while idle. A failure before the first frame is answered as a plain problem response with its HTTP status.
    /// </summary>
    sealed class SseInvokeResult(InferenceEngine engine, FinnInvokeRequest request, PoolDefinition pool, TimeSpan keepAlive, TimeProvider time,
        ILogger logger, string community) : IResult
    {
        readonly SemaphoreSlim _gate = new(1, 1);
        bool _started;

        public async Task ExecuteAsync(HttpContext http)
        {
            var ct = http.RequestAborted;
            var startedAt = time.GetTimestamp();
            using var stopKeepAlive = CancellationTokenSource.CreateLinkedTokenSource(ct);
            var keepAliveLoop = KeepAliveAsync(http, stopKeepAlive.Token);
            try
            {
                // Each delta carries the running usage, so a caller that stops early can charge exactly what was streamed.
                var promptTokens = Math.Min(Providers.Tokenizer.PromptTokens(request.Messages), TokenMath.InputUpperBound(request.Messages));
                var streamed = new Providers.Tokenizer.Running();
                var result = await engine.InvokeAsync(request, pool, (delta, c) =>
                {
                    var usage = new Usage(promptTokens, Math.Min(streamed.Add(delta), request.MaxTokens));
                    return new ValueTask(WriteAsync(http, Frame(FinnContract.DeltaEvent, new FinnDelta(delta, usage)), c));
                }, ct);
                await StopAsync(stopKeepAlive, keepAliveLoop);
                await WriteAsync(http, Frame(FinnContract.DoneEvent, result), ct);
                InferenceLog.Invoke(logger, pool.Id, result.Model, "ok", (long)time.GetElapsedTime(startedAt).TotalMilliseconds, result.CostMicro, true, request.TraceId, community);
            }
            catch (UpstreamException ex)
            {
                await StopAsync(stopKeepAlive, keepAliveLoop);
                InferenceLog.Invoke(logger, pool.Id, "none", UpstreamFailures.Kind(ex.Failure), (long)time.GetElapsedTime(startedAt).TotalMilliseconds,
                    ex.PartialUsage is { } pu ? PoolCatalog.CostMicro(pool, pu.PromptTokens, pu.CompletionTokens) : 0, true, request.TraceId, community);
                var (status, code) = UpstreamFailures.ToHttp(ex.Failure);
                if (!_started)
                {
                    _started = true;
                    await UpstreamProblem(ex, request.TraceId).ExecuteAsync(http);
                    return;
                }

                var problem = new Dictionary<string, object?>
                {
                    ["type"] = "https://arrakis.dev/errors/" + code.ToLowerInvariant().Replace('_', '-'),
                    ["title"] = code,
                    ["status"] = status,
                    ["detail"] = ex.Message,
                    ["error"] = code,
                    ["trace_id"] = request.TraceId,
                };
                if (ex.PartialUsage is { } usage)
                {
                    problem["usage"] = usage;
                    problem["cost_micro"] = PoolCatalog.CostMicro(pool, usage.PromptTokens, usage.CompletionTokens);
                }

                await WriteAsync(http, Frame(FinnContract.ErrorEvent, problem), ct);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                // The client went away; generation stopped with the cancellation.
                await StopAsync(stopKeepAlive, keepAliveLoop);
            }
        }

        static string Frame<T>(string name, T data) => $"event: {name}\ndata: {JsonSerializer.Serialize(data)}\n\n";

        async Task WriteAsync(HttpContext http, string text, CancellationToken ct)
        {
            await _gate.WaitAsync(ct);
            try
            {
                if (!_started)
                {
                    _started = true;
                    http.Response.StatusCode = 200;
                    http.Response.ContentType = "text/event-stream";
                    http.Response.Headers.CacheControl = "no-cache";
                    http.Response.Headers["X-Accel-Buffering"] = "no";
                    http.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
                    await http.Response.StartAsync(ct);
                }

                await http.Response.WriteAsync(text, ct);
                await http.Response.Body.FlushAsync(ct);
            }
            finally
            {
                _gate.Release();
            }
        }

        async Task KeepAliveAsync(HttpContext http, CancellationToken ct)
        {
            try
            {
                using var timer = new PeriodicTimer(keepAlive, time);
                while (await timer.WaitForNextTickAsync(ct))
                {
                    await WriteAsync(http, ": keepalive\n\n", ct);
                }
            }
            catch (OperationCanceledException)
            {
            }
        }

        static async Task StopAsync(CancellationTokenSource stop, Task loop)
        {
            await stop.CancelAsync();
            await loop;
        }
    }
}
