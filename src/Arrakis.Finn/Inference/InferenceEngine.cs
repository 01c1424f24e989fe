using System.Diagnostics;
using System.Text;
using Arrakis.Finn.Inference.Providers;
using Arrakis.Finn.Routing;
using Arrakis.Shared.Contracts;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Arrakis.Finn.Inference;

/// <summary>
/// Runs one invoke: routes among the pool's healthy models, calls the provider with a per-attempt timeout, retries
/// 429/5xx/timeouts with jittered backoff, records breaker outcomes, falls back to the next candidate of the same
/// pool (so never outside the caller's allowed pools), caps output at <c>max_tokens</c> and meters the cost.
/// Once a delta has reached the client, a failure is final (with the partial usage attached, never less than what was
/// forwarded); before that, a failure carries no usage, since nothing was delivered.
/// </summary>
public sealed class InferenceEngine(
    IEnumerable<IInferenceProvider> providers,
    ModelBreakers breakers,
    IModelRouter router,
    IOptions<InferenceOptions> options,
    TimeProvider time,
    InferenceMetrics metrics,
    ILogger<InferenceEngine> logger)
{
    readonly Dictionary<string, IInferenceProvider> _providers = providers.ToDictionary(p => p.Name, StringComparer.OrdinalIgnoreCase);
    readonly InferenceOptions _options = options.Value;

    /// <param name="onDelta">Receives each content delta as it arrives (streaming), or null to answer at the end.</param>
    public async Task<FinnInvokeResult> InvokeAsync(FinnInvokeRequest request, PoolDefinition pool, Func<string, CancellationToken, ValueTask>? onDelta, CancellationToken ct)
    {
        var state = new InvokeState();
        var tried = new HashSet<string>(StringComparer.Ordinal);
        UpstreamException? last = null;
        while (true)
        {
            var candidates = pool.Models.Where(m => !tried.Contains(m.Id))
                .Select(m => new RoutingCandidate(pool.Id, m.Id, breakers.IsAvailable(m.Id)))
                .ToList();
            if (!candidates.Any(c => c.Healthy))
            {
                throw last ?? new UpstreamException(UpstreamFailure.NoHealthyModel,
                    $"No healthy model in pool '{pool.Id}': every candidate's circuit breaker is open.", RetryAfterNoHealthyModel(pool));
            }

            var routing = new RoutingRequest(request.Agent, candidates, request.TraceId);
            RoutingDecision decision;
            try
            {
                decision = await router.ChooseAsync(routing, ct);
            }
            catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
            {
                // A failing router must not fail the invoke: take the deterministic choice instead.
                logger.LogWarning(ex, "Router {Router} failed; using the deterministic choice", router.GetType().Name);
                decision = DeterministicRouter.Choose(routing);
            }

            var chosen = decision.Chosen.Healthy && candidates.Any(c => c.Model == decision.Chosen.Model)
                ? decision.Chosen
                : candidates.First(c => c.Healthy);
            tried.Add(chosen.Model);
            var model = pool.Models.First(m => m.Id == chosen.Model);
            var info = decision.Info.Chosen == model.Id ? decision.Info : decision.Info with { Chosen = model.Id };
            if (!_providers.TryGetValue(model.Provider, out var provider))
            {
                last = new UpstreamException(UpstreamFailure.Rejected, $"Model '{model.Id}' names unknown provider '{model.Provider}'.");
                continue;
            }

            for (var attempt = 1; attempt <= _options.MaxAttempts; attempt++)
            {
                if (!breakers.TryAcquire(model.Id, out var probe))
                {
                    break;
                }

                var sw = Stopwatch.StartNew();
                try
                {
                    var (content, usage, finish) = await AttemptAsync(provider, model, request, pool, state, onDelta, ct);
                    breakers.RecordSuccess(model.Id);
                    var cost = PoolCatalog.CostMicro(pool, usage.PromptTokens, usage.CompletionTokens);
                    metrics.Call(pool.Id, model.Id, provider.Name, "ok", sw.Elapsed.TotalMilliseconds);
                    metrics.Tokens(pool.Id, usage.PromptTokens, usage.CompletionTokens);
                    InferenceLog.Call(logger, pool.Id, model.Id, provider.Name, attempt, "ok", sw.ElapsedMilliseconds, usage.PromptTokens, usage.CompletionTokens, request.TraceId);
                    return new FinnInvokeResult(content, model.Id, pool.Id, provider.Name, usage, cost, finish, info, provider.Simulated);
                }
                catch (UpstreamException ex)
                {
                    var kind = UpstreamFailures.Kind(ex.Failure);
                    metrics.Call(pool.Id, model.Id, provider.Name, kind, sw.Elapsed.TotalMilliseconds);
                    metrics.Error(pool.Id, model.Id, provider.Name, kind);
                    InferenceLog.Failed(logger, pool.Id, model.Id, provider.Name, attempt, kind, sw.ElapsedMilliseconds, request.TraceId, ex.Message);
                    if (ex.AboutTheRequest)
                    {
                        breakers.Release(model.Id, probe); // no verdict on the model, but a half-open probe must not stay in flight
                    }
                    else if (breakers.RecordFailure(model.Id, probe))
                    {
                        InferenceLog.BreakerOpened(logger, model.Id, pool.Id);
                    }

                    if (state.Forwarded)
                    {
                        // The delta frames already told the caller the running count of what was streamed; charge no less.
                        var forwarded = OpenAiProvider.Estimate(ProviderRequestFor(model, request, pool), state.Text.ToString());
                        var reported = ex.PartialUsage ?? forwarded;
                        var partial = Cap(reported with { CompletionTokens = Math.Max(reported.CompletionTokens, forwarded.CompletionTokens) }, request, pool);
                        throw new UpstreamException(ex.Failure, ex.Message, ex.RetryAfter, ex) { PartialUsage = partial };
                    }

                    // Nothing reached the caller, so a failed attempt's usage (e.g. a vendor's message_start count) is not charged.
                    last = ex.PartialUsage is null ? ex : new UpstreamException(ex.Failure, ex.Message, ex.RetryAfter, ex);
                    // A vendor that asks for a longer pause than retries may wait is not asked again now: the next
                    // candidate is tried instead (retrying sooner would only meet the same 429). Nor is a model whose
                    // breaker this failure opened (or that another call's probe holds): no backoff before the fallback.
                    if (!UpstreamFailures.Retryable(ex.Failure) || attempt == _options.MaxAttempts
                        || ex.RetryAfter > TimeSpan.FromMilliseconds(_options.RetryMaxDelayMs) || !breakers.IsAvailable(model.Id))
                    {
                        break;
                    }

                    await Task.Delay(Backoff(attempt, ex.RetryAfter), time, ct);
                }
                catch (OperationCanceledException) when (ct.IsCancellationRequested)
                {
                    // The caller went away: generation stopped with the cancellation; record what was streamed.
                    breakers.Release(model.Id, probe);
                    metrics.Call(pool.Id, model.Id, provider.Name, "cancelled", sw.Elapsed.TotalMilliseconds);
                    InferenceLog.Call(logger, pool.Id, model.Id, provider.Name, attempt, "cancelled", sw.ElapsedMilliseconds,
                        Tokenizer.PromptTokens(request.Messages), Tokenizer.Count(state.Text.ToString()), request.TraceId);
                    throw;
                }
                catch
                {
                    // Not the provider's failure (e.g. writing to the client broke): no verdict on the model, but never leave a probe in flight.
                    breakers.Release(model.Id, probe);
                    throw;
                }
            }
        }
    }

    async Task<(string Content, Usage Usage, string Finish)> AttemptAsync(
        IInferenceProvider provider, PoolModel model, FinnInvokeRequest request, PoolDefinition pool, InvokeState state,
        Func<string, CancellationToken, ValueTask>? onDelta, CancellationToken ct)
    {
        var timeoutAfter = TimeSpan.FromMilliseconds(_options.AttemptTimeoutMs);
        using var timeout = new CancellationTokenSource(timeoutAfter, time);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, timeout.Token);
        var providerRequest = ProviderRequestFor(model, request, pool) with
        {
            Stream = request.Stream || (_options.StreamVendorAnswers && provider.StreamReportsUsage),
        };
        var text = new StringBuilder();
        Usage? usage = null;
        string? finish = null;
        await using var chunks = provider.StreamAsync(providerRequest, linked.Token).GetAsyncEnumerator(linked.Token);
        while (true)
        {
            bool more;
            try
            {
                more = await chunks.MoveNextAsync();
            }
            catch (OperationCanceledException ex) when (!ct.IsCancellationRequested)
            {
                // Either our attempt timer fired or the HTTP stack gave up: both are upstream timeouts.
                throw new UpstreamException(UpstreamFailure.Timeout, $"{provider.Name} model {model.Id} did not answer within {_options.AttemptTimeoutMs} ms", null, ex)
                {
                    PartialUsage = text.Length > 0 ? OpenAiProvider.Estimate(providerRequest, text.ToString()) : null,
                };
            }
            catch (Exception ex) when (ex is not UpstreamException and not OperationCanceledException)
            {
                // The adapter could not read the vendor's answer (e.g. a lone surrogate such as "\ud800" throws when read as a string).
                throw new UpstreamException(UpstreamFailure.Malformed, $"{provider.Name} model {model.Id} sent a malformed answer: {ex.Message}", null, ex)
                {
                    PartialUsage = text.Length > 0 ? OpenAiProvider.Estimate(providerRequest, text.ToString()) : null,
                };
            }

            if (!more)
            {
                break;
            }

            timeout.CancelAfter(timeoutAfter);
            var chunk = chunks.Current;
            if (chunk.Delta is { Length: > 0 } delta)
            {
                text.Append(delta);
                if (onDelta is not null)
                {
                    state.Forwarded = true;
                    state.Text.Append(delta);

                    // A slow client's backpressure is not the provider's silence: the timer pauses while the delta is written.
                    timeout.CancelAfter(Timeout.InfiniteTimeSpan);
                    await onDelta(delta, ct);
                    timeout.CancelAfter(timeoutAfter);
                }
            }

            if (chunk.Usage is not null)
            {
                usage = chunk.Usage;
                finish = chunk.FinishReason ?? finish;
            }
        }

        if (usage is null)
        {
            throw new UpstreamException(UpstreamFailure.Malformed, $"{provider.Name} finished without reporting usage");
        }

        return (text.ToString(), Cap(usage, request, pool), finish ?? "stop");
    }

    /// <summary>
    /// When the pool's first model may be tried again: the earliest end of an open period, at least 1 s (a model whose
    /// half-open probe is in flight counts as 1 s: the probe settles it soon).
    /// </summary>
    TimeSpan RetryAfterNoHealthyModel(PoolDefinition pool)
    {
        var soonest = pool.Models.Select(m => breakers.AvailableIn(m.Id) ?? TimeSpan.Zero).DefaultIfEmpty(TimeSpan.Zero).Min();
        return soonest < TimeSpan.FromSeconds(1) ? TimeSpan.FromSeconds(1) : soonest;
    }

    static ProviderRequest ProviderRequestFor(PoolModel model, FinnInvokeRequest request, PoolDefinition pool) =>
        new(model, request.Messages, request.MaxTokens, request.Stream, request.TraceId);

    /// <summary>Never meter more than freeside reserved: output at most max_tokens, input at most the byte bound.</summary>
    static Usage Cap(Usage usage, FinnInvokeRequest request, PoolDefinition pool) => new(
        Math.Clamp(usage.PromptTokens, 0, TokenMath.InputUpperBound(request.Messages)),
        Math.Clamp(usage.CompletionTokens, 0, Math.Min(request.MaxTokens, pool.MaxTokensLimit)));

    TimeSpan Backoff(int attempt, TimeSpan? retryAfter)
    {
        var ceiling = Math.Min(_options.RetryMaxDelayMs, _options.RetryBaseDelayMs * Math.Pow(2, attempt - 1));
        var ms = (ceiling / 2) + (Random.Shared.NextDouble() * ceiling / 2);
        if (retryAfter is { } ra)
        {
            ms = Math.Min(_options.RetryMaxDelayMs, Math.Max(ms, ra.TotalMilliseconds));
        }

        return TimeSpan.FromMilliseconds(ms);
    }

    sealed class InvokeState
    {
        public bool Forwarded { get; set; }

        public StringBuilder Text { get; } = new();
    }
}
