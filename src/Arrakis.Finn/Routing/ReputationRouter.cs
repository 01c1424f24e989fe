using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text.Json;
using Arrakis.Finn.Identity;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.Logging;

namespace Arrakis.Finn.Routing;

/// <summary>One model's reputation for an agent, from dixie: posterior Beta(α, β) and its mean (null = no data).</summary>
public sealed record ModelReputation(double? Score, double Alpha, double Beta, long SampleCount);

/// <summary>Reads an agent's per-model scores from dixie <c>GET /api/reputation/models</c> with a finn service token.</summary>
public interface IReputationSource
{
    Task<IReadOnlyDictionary<string, ModelReputation>> ModelsAsync(string routingKey, CancellationToken ct);
}

public sealed class DixieReputationSource(IHttpClientFactory clients, TokenIssuer issuer) : IReputationSource
{
    public async Task<IReadOnlyDictionary<string, ModelReputation>> ModelsAsync(string routingKey, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, "api/reputation/models?routingKey=" + Uri.EscapeDataString(routingKey));
        var token = issuer.Mint(FinnService.Issuer, IdentitySetup.DixieAudience, new Dictionary<string, object> { ["sub"] = FinnService.Name });
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        using var response = await clients.CreateClient(IdentitySetup.DixieClient).SendAsync(request, ct);
        if (!response.IsSuccessStatusCode)
        {
            throw new HttpRequestException($"dixie answered {(int)response.StatusCode}", null, response.StatusCode);
        }

        await using var stream = await response.Content.ReadAsStreamAsync(ct);
        using var doc = await JsonDocument.ParseAsync(stream, cancellationToken: ct);
        // A malformed answer throws JsonException, which the router treats like an unreachable dixie.
        if (doc.RootElement.ValueKind != JsonValueKind.Object
            || !doc.RootElement.TryGetProperty("models", out var models) || models.ValueKind != JsonValueKind.Object)
        {
            throw new JsonException("dixie's models answer is not an object with a 'models' object.");
        }

        var result = new Dictionary<string, ModelReputation>(StringComparer.Ordinal);
        foreach (var m in models.EnumerateObject())
        {
            result[m.Name] = ParseModel(m.Value) ?? throw new JsonException($"dixie's models answer has a malformed entry for '{m.Name}'.");
        }

        return result;
    }

    /// <summary>One model's entry, or null when a field is present but not what dixie writes; absent fields take the prior.</summary>
    static ModelReputation? ParseModel(JsonElement v)
    {
        if (v.ValueKind != JsonValueKind.Object
            || !TryNumber(v, "score", out var score)
            || !TryNumber(v, "alpha", out var alpha)
            || !TryNumber(v, "beta", out var beta))
        {
            return null;
        }

        long n = 0;
        if (v.TryGetProperty("sample_count", out var c) && c.ValueKind != JsonValueKind.Null
            && !(c.ValueKind == JsonValueKind.Number && c.TryGetInt64(out n) && n >= 0))
        {
            return null;
        }

        return new ModelReputation(score, Math.Max(alpha ?? 1, 1e-3), Math.Max(beta ?? 1, 1e-3), n);
    }

    /// <summary>A finite number, or null when the field is absent or null; false for anything else.</summary>
    static bool TryNumber(JsonElement obj, string name, out double? value)
    {
        value = null;
        if (!obj.TryGetProperty(name, out var e) || e.ValueKind == JsonValueKind.Null)
        {
            return true;
        }

        if (e.ValueKind == JsonValueKind.Number && e.TryGetDouble(out var d) && double.IsFinite(d))
        {
            value = d;
            return true;
        }

        return false;
    }
}

/// <summary>
/// Reputation routing. <c>disabled</c>: the first healthy candidate. <c>shadow</c>: asks dixie and samples, logs and
/// reports the scores, but routes deterministically. <c>enabled</c>: with probability floor·N a uniform pick among the
/// healthy candidates (so each keeps ≥ floor), otherwise Thompson sampling: one draw from each candidate's Beta(α, β)
/// (Beta(1,1) without data), highest wins. The dixie query runs under a budget (200 ms); on timeout or error the
/// deterministic choice is used with reason <c>reputation_unavailable</c>.
/// </summary>
public sealed partial class ReputationRouter : IModelRouter
{
    readonly IReputationSource _source;
    readonly RoutingModeSwitch _mode;
    readonly RoutingOptions _options;
    readonly ILogger<ReputationRouter> _logger;
    readonly Random _rng;
    readonly Lock _rngLock = new();

    public ReputationRouter(IReputationSource source, RoutingModeSwitch mode, RoutingOptions options, ILogger<ReputationRouter> logger)
    {
        _source = source;
        _mode = mode;
        _options = options;
        _logger = logger;
        _rng = options.Seed is { } seed ? new Random(seed) : new Random();
    }

    public async Task<RoutingDecision> ChooseAsync(RoutingRequest request, CancellationToken ct)
    {
        if (request.Candidates.Count == 0)
        {
            throw new ArgumentException("A routing request needs at least one candidate.", nameof(request));
        }

        var mode = _mode.Current;
        var modeName = RoutingOptions.Name(mode);
        var healthy = request.Candidates.Where(c => c.Healthy).ToList();
        if (healthy.Count == 0)
        {
            return Decide(request.Candidates[0], modeName, "no_healthy_candidate", Empty(request.Candidates));
        }

        var deterministic = healthy[0];
        if (mode == RoutingMode.Disabled)
        {
            return Decide(deterministic, modeName, "disabled", Empty(healthy));
        }

        if (string.IsNullOrEmpty(request.Agent))
        {
            return Decide(deterministic, modeName, "no_agent", Empty(healthy));
        }

        if (healthy.Count == 1)
        {
            return Decide(deterministic, modeName, "single_candidate", Empty(healthy));
        }

        IReadOnlyDictionary<string, ModelReputation> reputations;
        var sw = Stopwatch.StartNew();
        var outcome = "ok";
        try
        {
            using var budget = CancellationTokenSource.CreateLinkedTokenSource(ct);
            budget.CancelAfter(_options.ReputationBudgetMs);
            // The budget bounds the latency we add, not the work: a slow query keeps going a little longer in the
            // background so connections and dixie's key cache warm up instead of being torn down on every timeout.
            var query = QueryInBackground(request.Agent);
            _ = query.ContinueWith(t => t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
            reputations = await query.WaitAsync(budget.Token);
        }
        catch (Exception ex) when (!ct.IsCancellationRequested && ex is OperationCanceledException or HttpRequestException or JsonException or InvalidOperationException)
        {
            outcome = ex is OperationCanceledException ? "timeout" : "error";
            LogQuery(sw.Elapsed.TotalMilliseconds, request.Agent, outcome, request.TraceId);
            return Decide(deterministic, modeName, "reputation_unavailable", Empty(healthy));
        }

        LogQuery(sw.Elapsed.TotalMilliseconds, request.Agent, outcome, request.TraceId);
        var scores = healthy.GroupBy(c => c.Model).ToDictionary(g => g.Key, g => reputations.TryGetValue(g.Key, out var r) ? r.Score : null);

        RoutingCandidate sampled;
        string reason;
        lock (_rngLock)
        {
            if (_rng.NextDouble() < Math.Min(1, _options.ExplorationFloor * healthy.Count))
            {
                sampled = healthy[_rng.Next(healthy.Count)];
                reason = "exploration";
            }
            else
            {
                sampled = healthy[0];
                var best = double.NegativeInfinity;
                foreach (var c in healthy)
                {
                    var r = reputations.TryGetValue(c.Model, out var rep) ? rep : new ModelReputation(null, 1, 1, 0);
                    var draw = BetaSampler.Sample(_rng, r.Alpha, r.Beta);
                    if (draw > best)
                    {
                        best = draw;
                        sampled = c;
                    }
                }

                reason = "thompson_sampling";
            }
        }

        if (mode == RoutingMode.Shadow)
        {
            LogShadow(sampled.Model, deterministic.Model, request.TraceId);
            return Decide(deterministic, modeName, "shadow", scores);
        }

        return Decide(sampled, modeName, reason, scores);
    }

    async Task<IReadOnlyDictionary<string, ModelReputation>> QueryInBackground(string agent)
    {
        using var linger = new CancellationTokenSource(TimeSpan.FromMilliseconds(Math.Max(2_000, _options.ReputationBudgetMs)));
        return await _source.ModelsAsync(agent, linger.Token);
    }

    static Dictionary<string, double?> Empty(IEnumerable<RoutingCandidate> candidates) =>
        candidates.Select(c => c.Model).Distinct().ToDictionary(m => m, _ => (double?)null);

    static RoutingDecision Decide(RoutingCandidate chosen, string mode, string reason, IReadOnlyDictionary<string, double?> scores) =>
        new(chosen, new RoutingInfo(mode, reason, chosen.Model, scores));

    [LoggerMessage(EventId = 3101, EventName = "REPUTATION_QUERY", Level = LogLevel.Information,
        Message = "Reputation query for {Agent} took {ReputationDurationMs} ms ({Outcome}) trace {TraceId}")]
    partial void LogQuery(double reputationDurationMs, string agent, string outcome, string traceId);

    [LoggerMessage(EventId = 3102, EventName = "ROUTING_SHADOW", Level = LogLevel.Information,
        Message = "Shadow routing would choose {ShadowChoice} instead of {Chosen} trace {TraceId}")]
    partial void LogShadow(string shadowChoice, string chosen, string traceId);
}
