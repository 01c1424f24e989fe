using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using Arrakis.Freeside.Communities;
using Arrakis.Freeside.Idempotency;
using Arrakis.Freeside.Ledger;
using Arrakis.Freeside.RateLimiting;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Http;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Arrakis.Freeside.Invoke;

/// <summary>A stored response an idempotency key replays.</summary>
public sealed record StoredResponse(int Status, string ContentType, byte[] Body);

/// <summary>An invoke that passed every gate and holds a reservation (or replays a stored response).</summary>
public sealed record Admitted(
    string CommunityId,
    string TenantId,
    Tier Tier,
    PoolDefinition Pool,
    InvokeRequest Request,
    int MaxTokens,
    long ReservedMicro,
    string ReservationId,
    string IdempotencyKey,
    string TraceId,
    bool Stream,
    StoredResponse? Replay,
    IReadOnlyList<string> AllowedPools)
{
    /// <summary>The finn call, when it was prepared while the reservation was in flight (see <see cref="InvokePipeline"/>).</summary>
    public FinnCall? Prepared { get; init; }
}

/// <summary>An admitted invoke, or the refusal to answer with the community and pool it concerned, when known by then.</summary>
public sealed record Admission(Admitted? Admitted, IResult? Rejection, string? CommunityId = null, string? Pool = null);

public enum SettlementStatus
{
    /// <summary>The finalize ran: the charge posted (or the reservation had already been resolved).</summary>
    Charged,

    /// <summary>The finalize's write failed; the reservation was released instead and nothing was charged.</summary>
    FinalizeFailed,

    /// <summary>
    /// The reservation was no longer pending when the finalize came (the reaper had expired it, or it was released), so
    /// nothing was charged; the answer stands and says so (cost 0).
    /// </summary>
    NotPosted,
}

/// <summary>
/// How a finalize ended, what it charged, and (for a full answer) the body stored for replay. For a failed write,
/// <paramref name="Dependency"/> names the unreachable dependency ("database") when that was the cause: the caller may
/// retry, so it is answered 503 rather than 500.
/// </summary>
public sealed record Settlement(SettlementStatus Status, long ChargedMicro, byte[]? Body = null, string? Dependency = null);

/// <summary>
/// The invoke flow: rate limit → idempotency → pool access by tier → reserve the worst case → finn → finalize at the
/// metered cost (release on failure) → store the response for replay. HTTP only frames what this returns.
/// </summary>
public sealed class InvokePipeline(
    CommunityStore communities,
    RateLimiter rateLimiter,
    IdempotencyStore idempotency,
    Ledger.Ledger ledger,
    PoolCatalog catalog,
    FinnClient finn,
    InvokeMetrics metrics,
    Payments.PaymentRequirementsBuilder payments,
    LedgerOptions ledgerOptions,
    ReleaseRetries releaseRetries,
    TimeProvider time,
    ILogger<InvokePipeline> logger,
    Microsoft.Extensions.Configuration.IConfiguration configuration)
{
    /// <summary>How long one write to a streaming client may stay blocked (see <see cref="InvokeStreaming.WriteTimeout"/>).</summary>
    public TimeSpan StreamWriteTimeout { get; } = InvokeStreaming.WriteTimeout(configuration);

    public async Task<Admission> AdmitAsync(HttpContext http, byte[] body, bool wantsSse, CancellationToken ct)
    {
        string? communityId = null;
        string? poolId = null;
        Admission Reject(IResult result) => new(null, result, communityId, poolId);

        var token = http.VerifiedToken();
        var tenant = token.TryGetPayloadValue<string>("tenant_id", out var t) ? t : null;
        if (string.IsNullOrEmpty(tenant))
        {
            return Reject(Problems.Create(403, "FORBIDDEN", "The token carries no tenant_id."));
        }

        var community = await communities.FindForTenantAsync(tenant, ct);
        if (community is null)
        {
            return Reject(Problems.Create(403, "FORBIDDEN", $"Tenant '{Shared.Tokens.TokenVerification.Echo(tenant)}' is not mapped to a community."));
        }

        communityId = community.Id;

        var user = token.Subject is { Length: > 0 } sub ? sub : tenant;
        var limit = await rateLimiter.CheckAsync(community.Tier, community.Id, user, ct);
        foreach (var (name, value) in RateLimiter.Headers(limit))
        {
            http.Response.Headers[name] = value;
        }

        if (!limit.Allowed)
        {
            return Reject(RateLimiter.Problem(limit));
        }

        var (request, invalid) = InvokeRequestParser.Parse(body);
        if (invalid is not null)
        {
            return Reject(Problems.Invalid(invalid.Field, invalid.Detail));
        }

        var requestedPool = request!.Pool ?? catalog.DefaultPoolFor(community.Tier);
        if (!catalog.Pools.TryGetValue(requestedPool, out var pool))
        {
            return Reject(Problems.Invalid("model", $"Unknown pool '{requestedPool}'. Pools: {string.Join(", ", catalog.Pools.Keys)}."));
        }

        poolId = pool.Id;

        var maxTokens = request.MaxTokens ?? pool.DefaultMaxTokens;
        if (maxTokens > pool.MaxTokensLimit)
        {
            // Before the tier check: a 402 for this body would quote a call the paid route then refuses as a 400.
            return Reject(Problems.Invalid("max_tokens", $"max_tokens may be at most {pool.MaxTokensLimit} for pool '{pool.Id}'."));
        }

        var allowed = AllowedPools(token, community.Tier);
        if (!allowed.Contains(pool.Id))
        {
            // Never 403: the caller may pay for this one call with x402 (the same requirements /api/v1/x402/invoke gives).
            var needed = catalog.LowestTierFor(pool.Id);
            var price = PoolCatalog.CostMicro(pool, TokenMath.InputUpperBound(request.Messages), maxTokens);
            var challenge = payments.Build(Math.Max(price, payments.Options.MinimumAmountMicro), $"{http.Request.Scheme}://{http.Request.Host}/api/v1/x402/invoke",
                $"One call to pool '{pool.Id}'", "TIER_UPGRADE_REQUIRED");
            var extensions = new Dictionary<string, object?>
            {
                ["pool"] = pool.Id,
                ["tier"] = community.Tier.ToString().ToLowerInvariant(),
                ["required_tier"] = needed?.ToString().ToLowerInvariant(),
                ["allowed_pools"] = allowed,
                ["x402Version"] = 1,
                ["accepts"] = challenge.V1Body["accepts"]?.DeepClone(),
                ["payment_endpoint"] = "/api/v1/x402/invoke",
            };
            foreach (var (name, value) in payments.BodyFields(challenge.AmountMicro))
            {
                extensions.TryAdd(name, value);
            }

            // The tier may allow the pool while the token's allowed_pools leaves it out: then an upgrade would not help.
            var detail = catalog.TierAllows(community.Tier, pool.Id)
                ? $"This token's allowed_pools do not include pool '{pool.Id}' (it allows: {(allowed.Count == 0 ? "none" : string.Join(", ", allowed))}). Use a token that allows it, or pay for this call with x402."
                : $"Pool '{pool.Id}' needs the {needed?.ToString().ToLowerInvariant() ?? "enterprise"} tier; this community is {community.Tier.ToString().ToLowerInvariant()}. Upgrade, or pay for this call with x402.";
            return Reject(Problems.Create(402, "TIER_UPGRADE_REQUIRED", detail, extensions, challenge.Headers.ToDictionary()));
        }

        using var json = JsonDocument.Parse(body);
        var (resolved, keyProblem) = IdempotencyKeys.Resolve(http.Request, json.RootElement);
        if (keyProblem is not null)
        {
            return Reject(keyProblem);
        }

        var key = resolved!.Value;
        var stream = wantsSse || request.Stream;
        var hash = RequestHash(request, pool.Id, maxTokens, stream);
        var worst = PoolCatalog.CostMicro(pool, TokenMath.InputUpperBound(request.Messages), maxTokens);
        var reservationId = "res_" + Guid.NewGuid().ToString("N");
        var traceId = TraceId();
        var admitted = new Admitted(community.Id, tenant, community.Tier, pool, request, maxTokens, worst, reservationId, key, traceId, stream, null, allowed);
        // Fast path: the key is claimed with the reservation, in one transaction (SQLite) or one function call (PostgreSQL).
        var reserving = ledger.ReserveAsync(community.Id, reservationId, worst, null, new LedgerKeyClaim(community.Id, key, hash),
            Abandoned<ReserveResult>(admitted, r => !r.Admitted), ct);
        if (!reserving.IsCompleted)
        {
            // The reservation is waiting on the database (PostgreSQL's round trip, or SQLite's writer queue): use the wait
            // to serialize finn's body and sign its token. A refused reservation just drops them; if signing fails here,
            // the finn call signs again and fails as it would have without this (after the reservation is settled).
            try
            {
                admitted = admitted with { Prepared = finn.Prepare(FinnRequest(admitted), Caller(admitted)) };
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                logger.LogDebug(ex, "Preparing the finn call beside the reservation failed; it is prepared again after it");
            }
        }

        var reserve = await UncertainAsync(admitted, reserving);
        var claimedApart = false;
        if (reserve.Status == ReserveStatus.KeyTaken)
        {
            // The key is already there: replay it, refuse, or (a crashed or expired claim) take it over and reserve.
            var begin = await UncertainAsync(admitted, idempotency.BeginAsync(community.Id, key, hash, reservationId,
                Abandoned<IdempotencyBegin>(admitted, b => b.State != IdempotencyState.Started), ct));
            switch (begin.State)
            {
                case IdempotencyState.Replay:
                    return new Admission(new Admitted(community.Id, tenant, community.Tier, pool, request, maxTokens, 0, "", key, traceId, stream,
                        new StoredResponse(begin.Status ?? 200, begin.ContentType ?? "application/json", System.Text.Encoding.UTF8.GetBytes(begin.Body ?? "")), allowed), null);
                case IdempotencyState.KeyReused:
                    return Reject(Problems.Create(409, "IDEMPOTENCY_KEY_REUSED", $"Idempotency key '{key}' was already used with a different request: another body, or a stream where the first was JSON (or the other way round). Send a new key for a new request."));
                case IdempotencyState.InProgress:
                    return Reject(Problems.Create(409, "REQUEST_IN_PROGRESS", $"A request with idempotency key '{key}' is still running; retry when it finishes."));
            }

            claimedApart = true;
            try
            {
                // Whatever becomes of this reserve, the key claimed apart is this call's until it is freed.
                reserve = await ledger.ReserveAsync(community.Id, reservationId, worst, null, null, Abandoned<ReserveResult>(admitted, _ => false), ct);
            }
            catch
            {
                releaseRetries.Add(admitted);
                throw;
            }
        }

        if (!reserve.Admitted)
        {
            if (claimedApart)
            {
                // A claim taken apart from the reservation is freed here (a claim made with it went back with the refusal).
                await AbandonTakenOverKeyAsync(admitted);
            }

            return Reject(reserve.Status switch
            {
                ReserveStatus.BudgetExceeded or ReserveStatus.WalletInsufficient => Problems.Create(402, "BUDGET_EXCEEDED",
                    reserve.Status == ReserveStatus.BudgetExceeded
                        ? $"The monthly budget cannot cover this request's worst case ({worst} micro-USD); {reserve.BudgetRemainingMicro} micro-USD remain this month."
                        : $"The credit wallet cannot cover this request's worst case ({worst} micro-USD); {reserve.WalletAvailableMicro} micro-USD are available.",
                    new Dictionary<string, object?>
                    {
                        ["limited_by"] = reserve.Status == ReserveStatus.BudgetExceeded ? "monthly_budget" : "credit_wallet",
                        ["required_micro"] = worst,
                        ["budget_remaining_micro"] = reserve.BudgetRemainingMicro,
                        ["wallet_available_micro"] = reserve.WalletAvailableMicro,
                    }),
                ReserveStatus.CommunityNotFound => Problems.Create(403, "FORBIDDEN", $"Community '{community.Id}' no longer exists."),
                _ => Problems.Create(400, "INVALID_REQUEST", reserve.Detail ?? "The reservation was refused."),
            });
        }

        return new Admission(admitted, null);
    }

    /// <summary>
    /// The hook for a reserve or key claim that the call stopped waiting for (it answered 503 after the request-path
    /// timeout, or its client left) and that may have committed when the database answered again: unless it ended
    /// having written nothing, the call's hold and key go to <see cref="ReleaseRetries"/> (a no-op for what is not
    /// there). Otherwise the retry the 503 invites got 409 REQUEST_IN_PROGRESS until the key's lease lapsed (10 min)
    /// and the hold kept the budget until the reaper's TTL. Only this call's own reservation and claim are touched.
    /// </summary>
    Action<Task<T>> Abandoned<T>(Admitted a, Func<T, bool> wroteNothing) => work =>
    {
        if (!work.IsCompletedSuccessfully || !wroteNothing(work.Result))
        {
            releaseRetries.Add(a);
        }
    };

    /// <summary>
    /// A reserve or key claim that failed because the database could not be reached may have committed all the same
    /// (the connection broke after the commit, before the answer): its hold and key go to <see cref="ReleaseRetries"/>.
    /// </summary>
    async Task<T> UncertainAsync<T>(Admitted a, Task<T> work)
    {
        try
        {
            return await work;
        }
        catch (Exception ex) when (Shared.Hosting.ServiceDefaults.UnavailableDependencyOf(ex) == "database")
        {
            releaseRetries.Add(a);
            throw;
        }
    }

    /// <summary>
    /// Frees the key a refused call took over (its earlier owner's lease had lapsed). A write that fails is logged
    /// (INVOKE_RELEASE_FAILED) and the caller still gets the refusal; when the database was unreachable the key goes to
    /// <see cref="ReleaseRetries"/>, as <see cref="ReleaseAsync"/> does. The failure escaped as a 503 instead, and the key
    /// stayed this call's: the retry that answer invites got 409 REQUEST_IN_PROGRESS for the key's whole lease (10 min).
    /// </summary>
    async Task AbandonTakenOverKeyAsync(Admitted a)
    {
        try
        {
            await idempotency.AbandonAsync(a.CommunityId, a.IdempotencyKey, a.ReservationId, CancellationToken.None);
        }
        catch (Exception ex)
        {
            logger.ReleaseFailed("idempotency key", a.IdempotencyKey, a.TraceId, ex);
            if (Shared.Hosting.ServiceDefaults.UnavailableDependencyOf(ex) is not null)
            {
                releaseRetries.Add(a);
            }
        }
    }

    IReadOnlyList<string> AllowedPools(Microsoft.IdentityModel.JsonWebTokens.JsonWebToken token, Tier tier)
    {
        var byTier = catalog.TierPools.TryGetValue(tier.ToString(), out var p) ? p : [];
        if (token.TryGetPayloadValue<string[]>("allowed_pools", out var claimed) && claimed is { Length: > 0 })
        {
            return byTier.Where(claimed.Contains).ToList();
        }

        return byTier;
    }

    static string TraceId() => Activity.Current?.TraceId.ToHexString() ?? Guid.NewGuid().ToString("N");

    static string RequestHash(InvokeRequest r, string pool, int maxTokens, bool stream)
    {
        var canonical = JsonSerializer.SerializeToUtf8Bytes(new { r.Messages, pool, maxTokens, r.Agent, stream });
        return Convert.ToHexStringLower(SHA256.HashData(canonical));
    }

    public FinnInvokeRequest FinnRequest(Admitted a) =>
        new(a.Request.Messages, a.Pool.Id, a.MaxTokens, a.Request.Agent, a.Stream, a.TraceId);

    public FinnCaller Caller(Admitted a) => new(a.TenantId, a.CommunityId, a.Tier, a.AllowedPools, a.ReservationId);

    public Task<(FinnInvokeResult? Result, UpstreamError? Error)> CallFinnAsync(Admitted a, CancellationToken ct) =>
        finn.InvokeAsync(PreparedCall(a), ct);

    public IAsyncEnumerable<FinnStreamEvent> StreamFinnAsync(Admitted a, CancellationToken ct) =>
        finn.StreamAsync(PreparedCall(a), ct);

    FinnCall PreparedCall(Admitted a) => a.Prepared ?? finn.Prepare(FinnRequest(a), Caller(a));

    /// <summary>Renews the call's reservation and idempotency key while finn works on it; dispose once finn has answered.</summary>
    public ReservationLease Hold(Admitted a) => new(ledger, a.ReservationId, ledgerOptions.ReservationTtl, time, logger,
        () => idempotency.RenewAsync(a.CommunityId, a.IdempotencyKey, a.ReservationId), idempotency.LeaseTimeout);

    /// <summary>
    /// Charges a stream that stopped early (the client left, or the upstream failed after some output) for what it
    /// produced, and stores, in the same commit, the answer a retry with the same key replays: a key charges at most
    /// once (C4), so the retry gets this problem (with the streamed content and the charge) instead of a second run.
    /// </summary>
    /// <param name="detail">The answer's detail, given what was charged (0 when the charge could not be posted).</param>
    public async Task<Settlement> ChargePartialAsync(Admitted a, Usage usage, long costMicro, int status, string error, Func<long, string> detail, string streamed, CancellationToken ct)
    {
        string Problem(long charged) => new System.Text.Json.Nodes.JsonObject
        {
            ["type"] = "https://arrakis.dev/errors/" + error.ToLowerInvariant().Replace('_', '-'),
            ["title"] = string.Join(' ', error.Split('_').Select(w => w.Length == 0 ? w : w[0] + w[1..].ToLowerInvariant())),
            ["status"] = status,
            ["detail"] = detail(charged),
            ["error"] = error,
            ["content"] = streamed,
            ["usage"] = new System.Text.Json.Nodes.JsonObject { ["prompt_tokens"] = usage.PromptTokens, ["completion_tokens"] = usage.CompletionTokens },
            ["cost_micro"] = charged,
            ["cost_cents"] = charged / 10_000,
            ["trace_id"] = a.TraceId,
            ["idempotency_key"] = a.IdempotencyKey,
        }.ToJsonString();

        const string problemType = "application/problem+json";
        var stored = idempotency.Completion(a.CommunityId, a.IdempotencyKey, a.ReservationId, status, Problem(Charge(a, costMicro)), problemType);
        var settled = await ChargeAsync(a, null, usage, costMicro, ct, stored);
        if (settled.Status == SettlementStatus.NotPosted)
        {
            await idempotency.ReplaceAsync(a.CommunityId, a.IdempotencyKey, a.ReservationId, status, Problem(0), problemType, CancellationToken.None);
        }

        return settled;
    }

    /// <summary>Releases the reservation and frees the idempotency key so the client may retry.</summary>
    public async Task FailAsync(Admitted a, UpstreamError error, CancellationToken ct)
    {
        logger.UpstreamFailed(error.Error, error.Detail, a.TraceId, a.CommunityId);
        await ReleaseAsync(a, ct);
    }

    /// <summary>
    /// An exception the finn call was not expected to throw (a defect, or a token that could not be signed): logged with
    /// its stack, and turned into a 500 the caller can read, so the call is failed like any upstream error (its hold
    /// released, its key freed, or what a stream already delivered charged) instead of escaping with the hold still
    /// renewed, a JSON caller's key stuck until its lease and a stream cut off without its error frame.
    /// </summary>
    public UpstreamError Unexpected(Admitted a, Exception exception)
    {
        logger.UnexpectedError(a.ReservationId, a.TraceId, exception);
        return new UpstreamError(500, "INTERNAL_ERROR", "An unexpected error occurred while running the call; it has been logged. Nothing was charged for what was not delivered.");
    }

    /// <summary>
    /// The client left before anything was metered for it (a JSON call meters nothing until finn answers): releases the
    /// reservation and frees the key now, rather than after the reaper's TTL and the key's lease, so a retry runs.
    /// </summary>
    public Task ClientLeftAsync(Admitted a) => ReleaseAsync(a, CancellationToken.None);

    /// <summary>
    /// Releases the hold and frees the key. A step whose write fails is logged (INVOKE_RELEASE_FAILED), so the caller still
    /// answers what happened to the call: an exception here would turn an upstream error into a 500, or cut a stream off
    /// without its error frame. When the database was unreachable, both steps are tried again once it answers
    /// (<see cref="ReleaseRetries"/>), so the retry the answer invites is not refused as still in progress; otherwise
    /// the reaper (within one TTL) and the key's lease free them.
    /// </summary>
    async Task ReleaseAsync(Admitted a, CancellationToken ct)
    {
        var unreachable = false;
        try
        {
            await ledger.ReleaseAsync(a.ReservationId, ct);
        }
        catch (Exception ex)
        {
            logger.ReleaseFailed("reservation", a.ReservationId, a.TraceId, ex);
            unreachable |= Shared.Hosting.ServiceDefaults.UnavailableDependencyOf(ex) is not null;
        }

        try
        {
            await idempotency.AbandonAsync(a.CommunityId, a.IdempotencyKey, a.ReservationId, ct);
        }
        catch (Exception ex)
        {
            logger.ReleaseFailed("idempotency key", a.IdempotencyKey, a.TraceId, ex);
            unreachable |= Shared.Hosting.ServiceDefaults.UnavailableDependencyOf(ex) is not null;
        }

        if (unreachable)
        {
            releaseRetries.Add(a);
        }
    }

    /// <summary>Finalizes at the metered cost (never above the reservation) and stores the response for replay.</summary>
    public async Task<Settlement> SettleAsync(Admitted a, FinnInvokeResult result, CancellationToken ct)
    {
        var charged = Charge(a, result.CostMicro);
        var body = JsonSerializer.SerializeToUtf8Bytes(InvokeResponse.From(result, charged, a), InvokeResponse.Json);
        // The response is stored for replay in the same commit as the charge: one write, and never one without the other.
        var stored = idempotency.Completion(a.CommunityId, a.IdempotencyKey, a.ReservationId, 200, System.Text.Encoding.UTF8.GetString(body), "application/json");
        var settled = await ChargeAsync(a, result.Model, result.Usage, result.CostMicro, ct, stored);
        if (settled.Status == SettlementStatus.NotPosted)
        {
            // The answer was stored with the charge it expected; it and its replays must say what was charged: nothing.
            body = JsonSerializer.SerializeToUtf8Bytes(InvokeResponse.From(result, 0, a), InvokeResponse.Json);
            await idempotency.ReplaceAsync(a.CommunityId, a.IdempotencyKey, a.ReservationId, 200, System.Text.Encoding.UTF8.GetString(body), "application/json", CancellationToken.None);
        }

        return settled.Status == SettlementStatus.FinalizeFailed ? settled : settled with { Body = body };
    }

    static long Charge(Admitted a, long costMicro) => Math.Clamp(costMicro, 0, a.ReservedMicro);

    /// <summary>
    /// Posts <paramref name="costMicro"/> (capped at the reservation) with its usage record. When the write fails, the
    /// reservation is released instead (<see cref="ReleaseAfterFailedFinalizeAsync"/>) and nothing is charged.
    /// </summary>
    public async Task<Settlement> ChargeAsync(Admitted a, string? model, Usage usage, long costMicro, CancellationToken ct, LedgerSideWrite? alongside = null)
    {
        var charged = Charge(a, costMicro);
        FinalizeResult finalized;
        try
        {
            finalized = await ledger.FinalizeAsync(a.ReservationId, charged, new UsageRecord(
                a.Request.Agent, a.Pool.Id, model, usage.PromptTokens, usage.CompletionTokens, a.TraceId, a.IdempotencyKey), alongside, ct);
        }
        catch (Exception ex)
        {
            await ReleaseAfterFailedFinalizeAsync(a, ex);
            return new Settlement(SettlementStatus.FinalizeFailed, 0, Dependency: Shared.Hosting.ServiceDefaults.UnavailableDependencyOf(ex));
        }

        if (finalized.Status is not (FinalizeStatus.Finalized or FinalizeStatus.Duplicate))
        {
            // Most often the reaper expired the hold while the call ran (renewals failed for a whole TTL): the budget
            // no longer holds it, so nothing may be posted now (C1), and nothing was.
            logger.FinalizeFailed(a.ReservationId, finalized.Status.ToString(), a.TraceId, null);
            return new Settlement(SettlementStatus.NotPosted, 0);
        }

        return new Settlement(SettlementStatus.Charged, charged);
    }

    /// <summary>
    /// The finalize is one transaction, so a write that failed posted nothing (nor stored the answer): release the hold
    /// now instead of leaving it to the reaper, and free the key so a retry runs. Should the commit have landed after
    /// all, the release finds the reservation resolved (C4) and the key complete, and both are no-ops; should it land
    /// after the release, it posts nothing and leaves the key for the abandon to free (<see cref="IdempotencyStore.Completion"/>).
    /// A release that fails as well is left to the reaper, within one TTL.
    /// </summary>
    async Task ReleaseAfterFailedFinalizeAsync(Admitted a, Exception error)
    {
        logger.FinalizeFailed(a.ReservationId, InvokeLog.WriteFailed, a.TraceId, error); // released below: nothing is charged
        await ReleaseAsync(a, CancellationToken.None);
    }

    /// <summary>Cost of what a stream produced before it stopped, from finn's running usage.</summary>
    public static long PartialCost(PoolDefinition pool, Usage? usage) =>
        usage is null ? 0 : PoolCatalog.CostMicro(pool, usage.PromptTokens, usage.CompletionTokens);

    /// <summary>
    /// The INVOKE_COMPLETE line of an invoke refused before it held a reservation (401 from the token check, 413, 429,
    /// 402, 400, 403, 409; nothing was charged), or of one whose body read or admission threw (<paramref name="status"/>
    /// 499, 408, 503 or 500). Only the log line: the invoke metrics describe calls that ran.
    /// </summary>
    public void Refused(int status, string outcome, string? communityId, string? pool, bool stream, TimeSpan elapsed) =>
        logger.InvokeComplete(status, outcome, pool, null, (long)elapsed.TotalMilliseconds, communityId ?? "", TraceId(), 0, 0, 0, stream);

    /// <summary>
    /// The INVOKE_COMPLETE line of an x402 request whose paid call ran or was refused, written once the request has been
    /// answered (after settlement): <paramref name="status"/> is what the client got and <paramref name="elapsed"/> the
    /// whole request. A call that ran counts in the invoke metrics with the same outcome, its InferenceLatencyMs being the
    /// call's own time (settlement is not inference); its cost is logged and counted only when the payment settled or is
    /// still settling (a failed settlement charges nothing).
    /// </summary>
    public void PaidCallAnswered(Payments.PaidCallReport call, int status, string outcome, TimeSpan elapsed)
    {
        var charged = outcome is "paid" or "settlement_pending" ? call.CostMicro : 0;
        if (call.Ran)
        {
            metrics.Completed(call.Pool, outcome, call.CallMs ?? elapsed.TotalMilliseconds, charged);
        }

        logger.InvokeComplete(status, outcome, call.Pool, call.Model, (long)elapsed.TotalMilliseconds, call.CommunityId, call.TraceId ?? TraceId(), charged,
            call.PromptTokens, call.CompletionTokens, false);
    }

    public void Complete(Admitted a, int status, string outcome, FinnInvokeResult? result, TimeSpan elapsed, long? chargedMicro = null)
    {
        var charged = chargedMicro ?? (result is null ? 0 : Math.Clamp(result.CostMicro, 0, a.ReservedMicro));
        metrics.Completed(a.Pool.Id, outcome, elapsed.TotalMilliseconds, charged);
        logger.InvokeComplete(status, outcome, a.Pool.Id, result?.Model, (long)elapsed.TotalMilliseconds, a.CommunityId, a.TraceId, charged,
            result?.Usage.PromptTokens ?? 0, result?.Usage.CompletionTokens ?? 0, a.Stream);
    }
}
