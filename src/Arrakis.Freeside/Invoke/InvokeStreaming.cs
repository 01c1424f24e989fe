using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Arrakis.Shared.Contracts;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;

namespace Arrakis.Freeside.Invoke;

/// <summary>
/// SSE on the invoke path: <c>event: delta</c> frames with content, one <c>event: done</c> frame with the full result and
/// usage (or <c>event: error</c>), and a <c>: keepalive</c> comment every 15 s. A client that leaves mid-stream is charged
/// exactly what was streamed to it: the running usage of the last delta it was sent. A stream that ends before any content
/// reached the client charges nothing, whatever finn had sent before (a keepalive starts its answer too). A client that
/// keeps its connection open but stops reading is one that left, once a write has been blocked for the write timeout.
/// </summary>
static class InvokeStreaming
{
    public static readonly TimeSpan KeepAliveInterval = TimeSpan.FromSeconds(15);

    public static readonly TimeSpan DefaultWriteTimeout = TimeSpan.FromMinutes(1);

    /// <summary>
    /// How long one write to a streaming client may stay blocked (<c>Invoke:StreamWriteTimeout</c>) before the stream is
    /// ended as a disconnect. A client that stops reading fills the socket buffers and the write waits; Kestrel's minimum
    /// data rate allows it a second per 240 bytes already sent (hours, after megabytes), and all the while the call's
    /// hold and key are renewed and finn's and the vendor's calls stay open.
    /// </summary>
    public static TimeSpan WriteTimeout(IConfiguration configuration) =>
        configuration.GetValue<TimeSpan?>("Invoke:StreamWriteTimeout") is { } t && t > TimeSpan.Zero ? t : DefaultWriteTimeout;

    public static string Frame(string name, object data, bool raw = false, long? id = null) =>
        (id is { } i ? $"id: {i}\n" : "") + $"event: {name}\ndata: {(raw ? (string)data : JsonSerializer.Serialize(data, InvokeResponse.Json))}\n\n";

    /// <summary>The <c>start</c> frame's data, live and replayed.</summary>
    public static object Start(string traceId, string pool, string idempotencyKey) =>
        new { type = "start", trace_id = traceId, pool, idempotency_key = idempotencyKey };

    public static async Task RunAsync(HttpContext http, InvokePipeline pipeline, Admitted a, Stopwatch sw)
    {
        var response = http.Response;
        response.StatusCode = 200;
        response.ContentType = "text/event-stream";
        response.Headers.CacheControl = "no-cache";
        response.Headers["X-Accel-Buffering"] = "no";
        response.Headers["Idempotency-Key"] = a.IdempotencyKey;
        var aborted = http.RequestAborted;
        var gate = new SemaphoreSlim(1, 1);
        // One write at a time (the gate), so one deadline serves them all; once it fires, every later write fails at once.
        using var writeDeadline = CancellationTokenSource.CreateLinkedTokenSource(aborted);

        async Task<bool> WriteAsync(string text)
        {
            await gate.WaitAsync(CancellationToken.None);
            try
            {
                writeDeadline.CancelAfter(pipeline.StreamWriteTimeout);
                await response.WriteAsync(text, Encoding.UTF8, writeDeadline.Token);
                await response.Body.FlushAsync(writeDeadline.Token);
                if (!writeDeadline.IsCancellationRequested)
                {
                    writeDeadline.CancelAfter(Timeout.InfiniteTimeSpan);
                    return true;
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or IOException or ObjectDisposedException)
            {
            }
            finally
            {
                gate.Release();
            }

            if (!aborted.IsCancellationRequested)
            {
                http.Abort(); // the client stopped reading: drop its connection, and the call ends as if it had left
            }

            return false;
        }

        using var keepAliveStop = CancellationTokenSource.CreateLinkedTokenSource(aborted);
        var keepAlive = Task.Run(async () =>
        {
            using var timer = new PeriodicTimer(KeepAliveInterval);
            try
            {
                while (await timer.WaitForNextTickAsync(keepAliveStop.Token))
                {
                    await WriteAsync(": keepalive\n\n");
                }
            }
            catch (OperationCanceledException)
            {
            }
        }, CancellationToken.None);

        long seq = 0;
        var streamed = new StringBuilder();
        var delivered = false; // a content delta reached the client: only then is there output to charge
        Usage? lastUsage = null;
        FinnInvokeResult? done = null;
        UpstreamError? failed = null;
        await WriteAsync(Frame("start", Start(a.TraceId, a.Pool.Id, a.IdempotencyKey), id: seq++));
        using (pipeline.Hold(a))
        {
            try
            {
                await foreach (var evt in pipeline.StreamFinnAsync(a, aborted))
                {
                    switch (evt)
                    {
                        case FinnStreamEvent.Delta d:
                            if (!await WriteAsync(Frame("delta", new { type = "delta", content = d.Value.Content }, id: seq++)))
                            {
                                goto Disconnected; // this delta never reached the client, so it is not charged
                            }

                            streamed.Append(d.Value.Content);
                            lastUsage = d.Value.Usage ?? lastUsage;
                            delivered |= !string.IsNullOrEmpty(d.Value.Content);
                            break;
                        case FinnStreamEvent.Done x:
                            done = x.Result;
                            break;
                        case FinnStreamEvent.Failed f:
                            failed = f.Error;
                            lastUsage = f.Partial ?? lastUsage;
                            break;
                    }
                }
            }
            catch (OperationCanceledException) when (aborted.IsCancellationRequested)
            {
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                failed = pipeline.Unexpected(a, ex); // charged what was delivered, the rest released, and an error frame
            }
        }

    Disconnected:
        await keepAliveStop.CancelAsync();
        await keepAlive;

        if (done is not null)
        {
            var settled = await pipeline.SettleAsync(a, done, CancellationToken.None);
            if (settled.Body is { } body)
            {
                await WriteAsync(Frame("done", Encoding.UTF8.GetString(body), raw: true, id: seq));
                pipeline.Complete(a, 200, "ok", done, sw.Elapsed, settled.ChargedMicro);
                return;
            }

            await WriteAsync(FinalizeFailedFrame(settled, seq));
            pipeline.Complete(a, InvokeResponses.FinalizeFailure(settled).Status, "finalize_failed", done, sw.Elapsed, settled.ChargedMicro);
            return;
        }

        // finn's error frame may carry usage (the prompt, at least) even when nothing reached the client: that is not charged.
        var partial = delivered ? InvokePipeline.PartialCost(a.Pool, lastUsage) : 0;
        if (failed is not null && !aborted.IsCancellationRequested)
        {
            var chargedBeforeFailure = 0L;
            if (partial > 0)
            {
                var settled = await pipeline.ChargePartialAsync(a, lastUsage!, partial, failed.Status, failed.Error,
                    charged => $"{failed.Detail} The stream stopped after {lastUsage!.CompletionTokens} tokens, {Charged(charged)}; a retry with this idempotency key replays this answer. Send a new key to run the request again.",
                    streamed.ToString(), CancellationToken.None);
                if (settled.Status == SettlementStatus.FinalizeFailed)
                {
                    await WriteAsync(FinalizeFailedFrame(settled, seq));
                    pipeline.Complete(a, InvokeResponses.FinalizeFailure(settled).Status, "finalize_failed", null, sw.Elapsed, settled.ChargedMicro);
                    return;
                }

                chargedBeforeFailure = settled.ChargedMicro;
            }
            else
            {
                await pipeline.FailAsync(a, failed, CancellationToken.None);
            }

            // A stream's status line has gone out, so finn's Retry-After (no healthy model) travels in the frame.
            object frame = failed.RetryAfter is { } wait
                ? new { type = "error", error = failed.Error, detail = failed.Detail, status = failed.Status, retry_after = (long)Math.Ceiling(wait.TotalSeconds) }
                : new { type = "error", error = failed.Error, detail = failed.Detail, status = failed.Status };
            await WriteAsync(Frame("error", frame, id: seq));
            pipeline.Complete(a, failed.Status, "upstream_failed", null, sw.Elapsed, chargedBeforeFailure);
            return;
        }

        // The client went away: charge what finn generated for it up to that point, release the rest.
        var charged = 0L;
        if (partial > 0)
        {
            charged = (await pipeline.ChargePartialAsync(a, lastUsage!, partial, 409, "REQUEST_INCOMPLETE",
                c => $"The first request with this idempotency key ended when the client disconnected after {lastUsage!.CompletionTokens} tokens, {Charged(c)}. A key charges at most once: send a new key to run the request again.",
                streamed.ToString(), CancellationToken.None)).ChargedMicro;
        }
        else
        {
            await pipeline.ClientLeftAsync(a);
        }

        pipeline.Complete(a, 499, "client_disconnected", null, sw.Elapsed, charged);
    }

    /// <summary>What the answer says of the charge: nothing when it could not be posted (the hold had expired meanwhile).</summary>
    static string Charged(long chargedMicro) => chargedMicro > 0
        ? $"which were charged ({chargedMicro} micro-USD)"
        : "for which nothing was charged (the call's hold had expired)";

    static string FinalizeFailedFrame(Settlement settled, long seq)
    {
        var (status, error, detail, _) = InvokeResponses.FinalizeFailure(settled);
        return Frame("error", new { type = "error", error, detail, status }, id: seq);
    }
}
