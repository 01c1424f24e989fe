using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Arrakis.Freeside.Identity;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Http;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Arrakis.Freeside.Invoke;

public static class InvokeApi
{
    public const string Path = "/api/agents/invoke";

    public static WebApplicationBuilder AddInvoke(this WebApplicationBuilder builder)
    {
        builder.Services.AddSingleton(PoolCatalog.FromConfiguration(builder.Configuration));
        builder.Services.AddSingleton<FinnClient>();
        builder.Services.AddSingleton<InvokeMetrics>();
        builder.Services.AddSingleton<InvokePipeline>();
        builder.Services.AddSingleton<ReleaseRetries>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<ReleaseRetries>());
        builder.Services.AddSingleton<Quality.IInvocationLookup, UsageInvocationLookup>();
        builder.Services.AddSingleton<Payments.IPaidInvocation, PaidInvocation>();
        builder.Services.AddSingleton<Payments.ICreditNoteSink, LedgerCreditNoteSink>();
        builder.Services.AddSingleton<Payments.IPayerCommunityResolver, TenantPayerCommunityResolver>();
        return builder;
    }

    public static IEndpointRouteBuilder MapInvokeApi(this IEndpointRouteBuilder app)
    {
        app.MapPost(Path, InvokeAsync).RequireToken(IdentitySetup.UserPolicy).WithMetadata(InvokeEndpoint.Instance).WithTags("Agents").WithName("InvokeAgent");
        return app;
    }

    /// <summary>Marks an invoke route (this one and the x402 one) for <see cref="LogAnsweredBeforeTheHandlerAsync"/>.</summary>
    internal sealed class InvokeEndpoint
    {
        public static readonly InvokeEndpoint Instance = new();
    }

    /// <summary>Set by the handler: from then on it logs the invoke's INVOKE_COMPLETE line itself.</summary>
    const string HandlerRanKey = "arrakis.invoke.handler";

    /// <summary>
    /// Said by the x402 route when the request presents a legacy payment proof: it buys no call, so the request logs no
    /// INVOKE_COMPLETE line.
    /// </summary>
    internal static void LogsItsOwnLine(HttpContext http) => http.Items[HandlerRanKey] = true;

    /// <summary>Set by the x402 route as its paid call starts: what the call reports for the request's line.</summary>
    const string PaidCallKey = "arrakis.invoke.paid_call";

    /// <summary>Set by the x402 route when it answers with a finished payment's stored answer.</summary>
    const string ReplayedKey = "arrakis.invoke.replayed";

    /// <summary>
    /// Said by the x402 route as its paid call is about to run: the call (and then the settlement) fill in the report,
    /// and <see cref="LogAnsweredBeforeTheHandlerAsync"/> logs the request's one line from it once the request has been
    /// answered, with the status the client got.
    /// </summary>
    internal static Payments.PaidCallReport PaidCallRuns(HttpContext http)
    {
        var report = new Payments.PaidCallReport();
        http.Items[PaidCallKey] = report;
        return report;
    }

    /// <summary>Said by the x402 route when it replays a finished payment's stored answer: outcome <c>replayed</c>, whatever its status.</summary>
    internal static void Replays(HttpContext http) => http.Items[ReplayedKey] = true;

    /// <summary>
    /// Middleware, ahead of <c>UseServiceDefaults</c>' token check: an invoke answered before its handler ran logs its
    /// INVOKE_COMPLETE line too (DESIGN §8: every invoke), with the status it was answered. That is a token the check
    /// refused (401, missing, expired, badly signed or replayed: outcome <c>rejected</c>), or a check that threw (503
    /// for an unreachable replay cache, else 500). On the x402 route it is every answer given before the paid call ran:
    /// a bad body's 400, the unpaid 402 quote, a refused payment (outcome <c>rejected</c>), a finished payment's stored
    /// answer replayed (outcome <c>replayed</c>, whatever status it replays), or a body the client left mid-way (499); and
    /// the request whose paid call ran, from what the call and its settlement reported (<see cref="PaidCallRuns"/>), once
    /// it has been answered: so its line has the status the client got (a failed settlement's 402, not the call's 200).
    /// The answer itself is left as it was; other routes pass through.
    /// </summary>
    public static async Task LogAnsweredBeforeTheHandlerAsync(HttpContext http, RequestDelegate next)
    {
        if (http.GetEndpoint()?.Metadata.GetMetadata<InvokeEndpoint>() is null)
        {
            await next(http);
            return;
        }

        var sw = Stopwatch.StartNew();
        await next(http);
        if (http.Items.ContainsKey(HandlerRanKey))
        {
            return;
        }

        // An exception the error handler answered is logged as the handler's own would be (a client that left: 499).
        var error = http.Features.Get<Microsoft.AspNetCore.Diagnostics.IExceptionHandlerFeature>()?.Error;
        var status = error is not null ? StatusOf(http, error, bodyEndedEarly: false) : http.Response.StatusCode;
        var pipeline = http.RequestServices.GetRequiredService<InvokePipeline>();
        if (http.Items[PaidCallKey] is Payments.PaidCallReport call)
        {
            pipeline.PaidCallAnswered(call, status, error is null ? call.Outcome ?? OutcomeOf(status) : OutcomeOf(status), sw.Elapsed);
            return;
        }

        var outcome = error is null && http.Items.ContainsKey(ReplayedKey) ? "replayed" : OutcomeOf(status);
        pipeline.Refused(status, outcome, null, null, WantsSse(http.Request), sw.Elapsed);
    }

    static bool WantsSse(HttpRequest request) => request.Headers.Accept.ToString().Contains("text/event-stream", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// The outcome an invoke that never held a reservation logs for the status it was answered. A success without a call
    /// is an x402 payment's stored answer replayed.
    /// </summary>
    static string OutcomeOf(int status) => status switch
    {
        499 => "client_disconnected",
        503 => "unavailable",
        >= 500 => "error",
        < 400 => "replayed",
        _ => "rejected",
    };

    /// <summary>JSON, or SSE when the client sends <c>Accept: text/event-stream</c> or <c>"stream":true</c>.</summary>
    static async Task InvokeAsync(HttpContext http, InvokePipeline pipeline, ILoggerFactory logs)
    {
        var sw = Stopwatch.StartNew();
        http.Items[HandlerRanKey] = true;
        var wantsSse = WantsSse(http.Request);
        using var buffer = new MemoryStream();
        Admission admission;
        try
        {
            // Reading the body may fail too (over Kestrel's MaxRequestBodySize, or the client left mid-body): logged below.
            await http.Request.Body.CopyToAsync(buffer, http.RequestAborted);
            admission = await pipeline.AdmitAsync(http, buffer.ToArray(), wantsSse, http.RequestAborted);
        }
        catch (Exception ex) when (Failed(pipeline, http, ex, wantsSse, sw.Elapsed, http.Request.ContentLength > buffer.Length))
        {
            throw; // never runs: the filter logs INVOKE_COMPLETE and lets the error handler answer
        }

        if (admission.Rejection is { } rejection)
        {
            await rejection.ExecuteAsync(http);
            pipeline.Refused(http.Response.StatusCode, "rejected", admission.CommunityId, admission.Pool, wantsSse, sw.Elapsed);
            return;
        }

        var admitted = admission.Admitted!;
        if (admitted.Replay is { } replay)
        {
            await InvokeResponses.WriteReplayAsync(http, replay, admitted.Stream, admitted.IdempotencyKey);
            pipeline.Complete(admitted, replay.Status, "replayed", null, sw.Elapsed); // the stored answer's status, e.g. 409 REQUEST_INCOMPLETE
            return;
        }

        if (admitted.Stream)
        {
            await InvokeStreaming.RunAsync(http, pipeline, admitted, sw);
            return;
        }

        FinnInvokeResult? result = null;
        UpstreamError? error = null;
        var clientLeft = false;
        using (pipeline.Hold(admitted))
        {
            try
            {
                (result, error) = await pipeline.CallFinnAsync(admitted, http.RequestAborted);
            }
            catch (OperationCanceledException) when (http.RequestAborted.IsCancellationRequested)
            {
                clientLeft = true;
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                error = pipeline.Unexpected(admitted, ex);
            }
        }

        if (clientLeft)
        {
            await pipeline.ClientLeftAsync(admitted);
            pipeline.Complete(admitted, 499, "client_disconnected", null, sw.Elapsed);
            return;
        }

        if (error is not null)
        {
            await pipeline.FailAsync(admitted, error, CancellationToken.None);
            await InvokeResponses.Upstream(error).ExecuteAsync(http);
            pipeline.Complete(admitted, error.Status, "upstream_failed", null, sw.Elapsed);
            return;
        }

        var settled = await pipeline.SettleAsync(admitted, result!, CancellationToken.None);
        if (settled.Body is not { } body)
        {
            var (status, problem) = InvokeResponses.FinalizeFailed(settled);
            await problem.ExecuteAsync(http);
            pipeline.Complete(admitted, status, "finalize_failed", result, sw.Elapsed, settled.ChargedMicro);
            return;
        }

        http.Response.Headers["Idempotency-Key"] = admitted.IdempotencyKey;
        await JsonBody.WriteAsync(http.Response, 200, body); // with its length: the client has it before the log line below
        pipeline.Complete(admitted, 200, "ok", result, sw.Elapsed, settled.ChargedMicro);
    }

    /// <summary>
    /// A body read or an admission that threw still logs its INVOKE_COMPLETE line, with <see cref="StatusOf"/>. Returns
    /// false, so the exception goes on.
    /// </summary>
    static bool Failed(InvokePipeline pipeline, HttpContext http, Exception ex, bool stream, TimeSpan elapsed, bool bodyEndedEarly)
    {
        var status = StatusOf(http, ex, bodyEndedEarly);
        pipeline.Refused(status, OutcomeOf(status), null, null, stream, elapsed);
        return false;
    }

    /// <summary>
    /// The status an invoke whose body read or admission threw logs, as the error handler answers it: 499 when the
    /// client left (a cancellation or a broken read once the request was aborted, or a body that ended early: before its
    /// Content-Length, or before the last chunk of a chunked one; the client closed the connection mid-body, and Kestrel
    /// sends the error handler's 400 to no one), 408 for a body that arrived slower than Kestrel's minimum data rate,
    /// 413 for a body over the size limit, 415 for one it cannot read and 400 for any other bad body (outcome
    /// <c>rejected</c>), 503 for an unreachable database or Redis, else 500.
    /// </summary>
    static int StatusOf(HttpContext http, Exception ex, bool bodyEndedEarly) =>
        (ex is OperationCanceledException or IOException) && http.RequestAborted.IsCancellationRequested ? 499
        : ex is BadHttpRequestException bad ? bad.StatusCode is 408 or 413 or 415 ? bad.StatusCode : bodyEndedEarly || EndedEarly(bad) ? 499 : 400
        : Shared.Hosting.ServiceDefaults.UnavailableDependencyOf(ex) is not null ? 503 : 500;

    /// <summary>
    /// Kestrel's refusal of a body whose connection ended before the body did (its <c>UnexpectedEndOfRequestContent</c>,
    /// for either framing). Kestrel aborts the request then, but the abort reaches <see cref="HttpContext.RequestAborted"/>
    /// later, on the thread pool, so a chunked body (whose length is not known up front) is told by this message.
    /// </summary>
    static bool EndedEarly(BadHttpRequestException bad) => bad.StatusCode == 400 && bad.Message == "Unexpected end of request content.";
}

/// <summary>The 200 body: a JSON object with <c>content</c> first, never an array (the launch gate reads it with jq).</summary>
public sealed record InvokeResponse(
    string Content,
    string Model,
    string Pool,
    string Provider,
    Usage Usage,
    long CostMicro,
    long CostCents,
    string TraceId,
    string IdempotencyKey,
    string ReservationId,
    RoutingInfo Routing,
    bool Simulated,
    string FinishReason)
{
    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web) { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public static InvokeResponse From(FinnInvokeResult r, long chargedMicro, Admitted a) =>
        new(r.Content, r.Model, r.Pool, r.Provider, r.Usage, chargedMicro, chargedMicro / 10_000, a.TraceId, a.IdempotencyKey, a.ReservationId, r.Routing, r.Simulated, r.FinishReason);
}

static class InvokeResponses
{
    public static IResult Upstream(UpstreamError e) => Shared.Http.Problems.Create(e.Status, e.Error, e.Detail, headers: e.RetryAfter is { } wait
        ? new Dictionary<string, string> { ["Retry-After"] = ((long)Math.Ceiling(wait.TotalSeconds)).ToString(System.Globalization.CultureInfo.InvariantCulture) }
        : null);

    public const string FinalizeFailedDetail = "The call's charge could not be recorded, so nothing was charged; retry with the same idempotency key.";

    /// <summary>
    /// The finalize's write failed and its reservation was released (see <see cref="InvokePipeline.ChargeAsync"/>): 503
    /// SERVICE_UNAVAILABLE with Retry-After when the database was unreachable, as every route answers an outage, else
    /// 500 INTERNAL_ERROR.
    /// </summary>
    public static (int Status, string Error, string Detail, string? Dependency) FinalizeFailure(Settlement s) => s.Dependency is { } dependency
        ? (503, "SERVICE_UNAVAILABLE", $"The service's {dependency} is not reachable right now. {FinalizeFailedDetail}", dependency)
        : (500, "INTERNAL_ERROR", FinalizeFailedDetail, null);

    public static (int Status, IResult Problem) FinalizeFailed(Settlement s)
    {
        var (status, error, detail, dependency) = FinalizeFailure(s);
        return (status, dependency is null ? Shared.Http.Problems.Create(status, error, detail) : Shared.Http.Problems.Unavailable(dependency, detail));
    }

    public static async Task WriteReplayAsync(HttpContext http, StoredResponse stored, bool stream, string idempotencyKey)
    {
        http.Response.Headers["Idempotency-Replayed"] = "true";
        http.Response.Headers["Idempotency-Key"] = idempotencyKey; // as the first answer had it
        if (stream && stored.Status == 200)
        {
            http.Response.ContentType = "text/event-stream";
            http.Response.Headers.CacheControl = "no-cache";
            // The frames a live stream sends, in its order and with its ids: start, one delta with the whole content, done.
            using var doc = JsonDocument.Parse(stored.Body);
            string? Text(string name) => doc.RootElement.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;
            var frames = InvokeStreaming.Frame("start", InvokeStreaming.Start(Text("trace_id") ?? "", Text("pool") ?? "", idempotencyKey), id: 0)
                + InvokeStreaming.Frame("delta", new { type = "delta", content = Text("content") ?? "" }, id: 1)
                + InvokeStreaming.Frame("done", Encoding.UTF8.GetString(stored.Body), raw: true, id: 2);
            await http.Response.WriteAsync(frames);
            return;
        }

        await JsonBody.WriteAsync(http.Response, stored.Status, stored.Body, stored.ContentType);
    }
}
