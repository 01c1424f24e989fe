using System.Net;
using System.Net.Http.Headers;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using Arrakis.Freeside.Identity;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Tokens;

namespace Arrakis.Freeside.Invoke;

/// <summary>An upstream failure mapped to the status freeside answers with (YARP style: 502 failed, 503 unavailable, 504 timed out).</summary>
/// <see cref="RetryAfter"/>: when finn said to come back (its 503 "no healthy model"), passed on to the client.
public sealed record UpstreamError(int Status, string Error, string Detail, TimeSpan? RetryAfter = null);

/// <summary>What freeside tells finn about the caller, carried in the per-request finn token.</summary>
public sealed record FinnCaller(string TenantId, string CommunityId, Tier Tier, IReadOnlyList<string> AllowedPools, string ReservationId);

public abstract record FinnStreamEvent
{
    public sealed record Delta(FinnDelta Value) : FinnStreamEvent;

    public sealed record Done(FinnInvokeResult Result) : FinnStreamEvent;

    /// <param name="Partial">What finn had generated before it failed (from the error frame), to charge exactly that.</param>
    public sealed record Failed(UpstreamError Error, Usage? Partial = null) : FinnStreamEvent;
}

/// <summary>A call to finn ready to send: the body's exact bytes and the finn token that binds them.</summary>
public sealed record FinnCall(byte[] Body, string Token, bool Stream)
{
    /// <summary>Never prints the token (it is a bearer credential for finn).</summary>
    public override string ToString() => $"FinnCall {{ Body = {Body.Length} bytes, Stream = {Stream} }}";
}

/// <summary>
/// Calls finn with a fresh finn-audience token that binds the exact body bytes (<c>req_hash</c>) and the reservation.
/// </summary>
public sealed class FinnClient(IHttpClientFactory clients, TokenIssuer issuer, Microsoft.Extensions.Configuration.IConfiguration configuration)
{
    /// <summary>
    /// Text other than ASCII is written as UTF-8, not as \uXXXX escapes (6 bytes a character): finn reads JSON, never
    /// HTML, and a prompt within freeside's length limit then fits finn's body limit.
    /// </summary>
    internal static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web) { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
    readonly TimeSpan _idleTimeout = IdentitySetup.FinnStreamIdleTimeout(configuration);

    /// <summary>
    /// Serializes the body and mints its finn token (an ES256 signature). Nothing is sent, so the pipeline can do this
    /// while the reservation's database round trip is in flight.
    /// </summary>
    public FinnCall Prepare(FinnInvokeRequest body, FinnCaller caller)
    {
        var bytes = JsonSerializer.SerializeToUtf8Bytes(body, Json);
        var token = issuer.Mint(FreesideService.Issuer, IdentitySetup.FinnAudience, new Dictionary<string, object>
        {
            ["tenant_id"] = caller.TenantId,
            ["community_id"] = caller.CommunityId,
            ["tier"] = caller.Tier.ToString().ToLowerInvariant(),
            ["allowed_pools"] = caller.AllowedPools.ToArray(),
            ["reservation_id"] = caller.ReservationId,
            ["req_hash"] = FinnContract.RequestHash(bytes),
            ["trace_id"] = body.TraceId,
        });
        return new FinnCall(bytes, token, body.Stream);
    }

    static HttpRequestMessage Build(FinnCall call)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, FinnContract.InvokePath)
        {
            Content = new ByteArrayContent(call.Body),
        };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", call.Token);
        if (call.Stream)
        {
            request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("text/event-stream"));
        }

        return request;
    }

    public Task<(FinnInvokeResult? Result, UpstreamError? Error)> InvokeAsync(FinnInvokeRequest body, FinnCaller caller, CancellationToken ct) =>
        InvokeAsync(Prepare(body, caller), ct);

    public async Task<(FinnInvokeResult? Result, UpstreamError? Error)> InvokeAsync(FinnCall call, CancellationToken ct)
    {
        using var request = Build(call);
        try
        {
            using var response = await clients.CreateClient(IdentitySetup.FinnClient).SendAsync(request, ct);
            var text = await response.Content.ReadAsStringAsync(ct);
            if (!response.IsSuccessStatusCode)
            {
                return (null, FromProblem(response.StatusCode, text) with { RetryAfter = RetryAfterOf(response) });
            }

            var result = JsonSerializer.Deserialize<FinnInvokeResult>(text, Json);
            return result is null ? (null, new UpstreamError(502, "UPSTREAM_INVALID", "finn returned an empty body.")) : (result, null);
        }
        catch (Exception ex) when (Classify(ex, ct) is { } error)
        {
            return (null, error);
        }
    }

    public async IAsyncEnumerable<FinnStreamEvent> StreamAsync(FinnCall call, [EnumeratorCancellation] CancellationToken ct)
    {
        using var request = Build(call);
        HttpResponseMessage? response = null;
        UpstreamError? failure = null;
        try
        {
            response = await clients.CreateClient(IdentitySetup.FinnClient).SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
            if (!response.IsSuccessStatusCode)
            {
                failure = FromProblem(response.StatusCode, await response.Content.ReadAsStringAsync(ct)) with { RetryAfter = RetryAfterOf(response) };
            }
        }
        catch (Exception ex) when (Classify(ex, ct) is { } error)
        {
            failure = error;
        }

        using var owned = response;
        if (failure is not null || response is null)
        {
            yield return new FinnStreamEvent.Failed(failure ?? new UpstreamError(502, "UPSTREAM_FAILED", "finn gave no response."));
            yield break;
        }

        await using var stream = await response.Content.ReadAsStreamAsync(ct);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        // The client's timeout ended with the headers: a finn that hangs mid-stream would hold the call for as long as the
        // caller waits, its reservation renewed all along. Each read gets the idle timeout (not the time we spend writing).
        using var idle = CancellationTokenSource.CreateLinkedTokenSource(ct);
        string? eventName = null;
        var data = new StringBuilder();
        var sawDone = false;
        var silent = false;
        while (true)
        {
            string? line;
            try
            {
                idle.CancelAfter(_idleTimeout);
                line = await reader.ReadLineAsync(idle.Token);
                idle.CancelAfter(Timeout.InfiniteTimeSpan);
            }
            catch (Exception ex) when (ex is IOException or HttpRequestException)
            {
                line = null;
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                silent = true;
                line = null;
            }

            if (line is null)
            {
                break;
            }

            if (line.Length == 0)
            {
                if (data.Length > 0)
                {
                    var evt = Parse(eventName, data.ToString());
                    sawDone |= evt is FinnStreamEvent.Done;
                    yield return evt;
                    if (evt is not FinnStreamEvent.Delta)
                    {
                        yield break;
                    }
                }

                eventName = null;
                data.Clear();
                continue;
            }

            if (line.StartsWith("event:", StringComparison.Ordinal))
            {
                eventName = line[6..].Trim();
            }
            else if (line.StartsWith("data:", StringComparison.Ordinal))
            {
                data.Append(line[5..].TrimStart());
            }
        }

        if (!sawDone && !ct.IsCancellationRequested)
        {
            yield return new FinnStreamEvent.Failed(silent
                ? new UpstreamError(504, "FINN_TIMEOUT", $"finn sent nothing for {_idleTimeout.TotalSeconds:0} s in the middle of its stream.")
                : new UpstreamError(502, "UPSTREAM_FAILED", "finn closed the stream before its final frame."));
        }
    }

    static FinnStreamEvent Parse(string? eventName, string data)
    {
        try
        {
            return eventName switch
            {
                FinnContract.DoneEvent => new FinnStreamEvent.Done(JsonSerializer.Deserialize<FinnInvokeResult>(data, Json)!),
                FinnContract.ErrorEvent => new FinnStreamEvent.Failed(FromProblem(HttpStatusCode.BadGateway, data), PartialUsage(data)),
                _ => new FinnStreamEvent.Delta(JsonSerializer.Deserialize<FinnDelta>(data, Json)!),
            };
        }
        catch (JsonException)
        {
            return new FinnStreamEvent.Failed(new UpstreamError(502, "UPSTREAM_INVALID", "finn sent a frame that is not JSON."));
        }
    }

    static Usage? PartialUsage(string data)
    {
        using var doc = JsonDocument.Parse(data);
        return doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("usage", out var u) && u.ValueKind == JsonValueKind.Object
            ? u.Deserialize<Usage>(Json)
            : null;
    }

    /// <summary>finn's <c>Retry-After</c> on a 503 (whole seconds, 1 to 3600), else null.</summary>
    static TimeSpan? RetryAfterOf(HttpResponseMessage response) =>
        response.StatusCode == HttpStatusCode.ServiceUnavailable && response.Headers.RetryAfter?.Delta is { } delta
            && delta >= TimeSpan.FromSeconds(1) && delta <= TimeSpan.FromHours(1) ? delta : null;

    static UpstreamError FromProblem(HttpStatusCode status, string text)
    {
        string? error = null;
        string? detail = null;
        var upstreamStatus = (int)status;
        try
        {
            using var doc = JsonDocument.Parse(text);
            if (doc.RootElement.ValueKind == JsonValueKind.Object)
            {
                error = doc.RootElement.TryGetProperty("error", out var e) && e.ValueKind == JsonValueKind.String ? e.GetString() : null;
                detail = doc.RootElement.TryGetProperty("detail", out var d) && d.ValueKind == JsonValueKind.String ? d.GetString() : null;
                if (doc.RootElement.TryGetProperty("status", out var s) && s.TryGetInt32(out var parsed))
                {
                    upstreamStatus = parsed;
                }
            }
        }
        catch (JsonException)
        {
        }

        // finn's own 5xx pass through (provider failed / no healthy model / timed out); anything else is our bug talking to finn.
        return upstreamStatus is 502 or 503 or 504
            ? new UpstreamError(upstreamStatus, error ?? "UPSTREAM_FAILED", detail ?? $"finn answered {upstreamStatus}.")
            : new UpstreamError(502, "UPSTREAM_REJECTED", $"finn refused the request ({upstreamStatus} {error}): {detail}");
    }

    static UpstreamError? Classify(Exception ex, CancellationToken ct) => ex switch
    {
        OperationCanceledException when ct.IsCancellationRequested => null,
        TaskCanceledException or TimeoutException => new UpstreamError(504, "FINN_TIMEOUT", "finn did not answer in time."),
        HttpRequestException => new UpstreamError(503, "FINN_UNAVAILABLE", "finn could not be reached: " + ex.Message),
        IOException => new UpstreamError(502, "UPSTREAM_FAILED", "The connection to finn broke: " + ex.Message),
        _ => null,
    };
}
