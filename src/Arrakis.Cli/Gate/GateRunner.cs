using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Arrakis.Cli.Gate;

/// <summary>
/// The launch gate (freeside-launch-gate.md §2): P0-1 health, P0-2 JWKS, P0-3 JWT + invoke, P0-4 budget conservation,
/// chaos, P1-5 reputation, P1-6 SSE, P1-7 autopoietic loop and P1-8 x402, in that order, with the smoke script's
/// record names, details, classifications and exit codes. Where the script would have died or passed silently (§2.7,
/// failed budget re-reads) the gate records a FAIL PLATFORM_BUG that says what was wrong.
/// </summary>
internal sealed partial class GateRunner(GateSettings settings, GateTimings timings, GateHttp http, GateReport report, IGateSeeder seeder, IX402Payer payer)
{
    internal const string HelloBody = """{"prompt":"Say hello in exactly 3 words","model":"cheap"}""";
    internal const string HiBody = """{"prompt":"Hi","model":"cheap"}""";
    internal const string DuplicateBody = """{"prompt":"Chaos test 1","model":"cheap","idempotency_key":"chaos-smoke-dup-001"}""";
    internal const string OverBudgetBody = """{"prompt":"Write a 10000 word essay on chaos engineering","model":"architect"}""";
    internal const string SseBody = """{"prompt":"Say hi","model":"cheap","stream":true}""";
    internal const string AutopoieticBody = """{"prompt":"Explain autopoiesis in one sentence","model":"cheap"}""";
    internal const string X402Body = """{"prompt":"x402 payment test","model":"cheap"}""";
    const string NoKey = "no --test-key provided";
    const int PhaseCount = 9;

    GateSettings _settings = settings;
    GateTokens? _tokens;
    string? _keyUnusable;

    string Freeside => Base(_settings.FreesideUrl);

    string Dixie => Base(_settings.DixieUrl);

    string InvokeUrl => Freeside + "/api/agents/invoke";

    string BudgetUrl => $"{Freeside}/api/v1/communities/{Uri.EscapeDataString(_settings.CommunityId!)}/budget";

    /// <summary>The key is set and minted a token (P0-3); phases that need it SKIP otherwise.</summary>
    bool HasKey => _tokens is not null;

    bool HasCommunity => _settings.CommunityId is not null;

    string MissingKeyDetail => _settings.TestKeyPath is null ? NoKey : $"no usable --test-key ({_keyUnusable})";

    /// <summary>A base URL as curl reads it: without a scheme it is http.</summary>
    static string Base(string url) => (url.Contains("://", StringComparison.Ordinal) ? url : "http://" + url).TrimEnd('/');

    /// <summary>Runs every phase, prints the summary, writes the JSON document to <paramref name="json"/> when asked, and returns 0, 1 or 2.</summary>
    public async Task<int> RunAsync(TextWriter json, CancellationToken ct)
    {
        try
        {
            if (_settings.AutoSeed)
            {
                await AutoSeedAsync(ct);
            }

            Banner();
            await Phase(1, "Phase 1: Health Checks (P0)", () => HealthAsync(ct));
            await Phase(2, "Phase 2: JWKS Verification (P0)", () => JwksAsync(ct));
            await Phase(3, "Phase 3: JWT Round-Trip + Invoke (P0)", () => JwtAndInvokeAsync(ct));
            await Phase(4, "Phase 4: Budget Conservation (P0)", () => BudgetAsync(ct));
            if (_settings.Chaos && HasKey && HasCommunity)
            {
                await Phase(5, "Chaos: Economic Invariant Scenarios (P1)", () => ChaosAsync(ct));
            }

            await Phase(6, "Phase 5: Reputation Query (P1)", () => ReputationAsync(ct));
            await Phase(7, "Phase 6: SSE Streaming (P1)", () => SseAsync(ct));
            await Phase(8, "Phase 7: Autopoietic Loop Trace (P1)", () => AutopoieticAsync(ct));
            await Phase(9, "Phase 8: x402 Payment (P1)", () => X402Async(ct));

            report.WriteSummary();
            if (_settings.Json)
            {
                await json.WriteLineAsync(report.ToJson(DateTimeOffset.UtcNow, _settings.FreesideUrl, _settings.DixieUrl));
                await json.FlushAsync(ct);
            }

            report.WriteResult();
            return report.ExitCode;
        }
        finally
        {
            _tokens?.Dispose();
        }
    }

    async Task Phase(int index, string title, Func<Task> body)
    {
        report.Progress(index, PhaseCount, title);
        report.Line($"── {title} " + new string('─', Math.Max(3, 56 - title.Length)));
        report.Line();
        await body();
        report.Line();
    }

    void Banner()
    {
        report.Line("================================================================");
        report.Line("  Launch gate — staging smoke (freeside-launch-gate §2)");
        report.Line("================================================================");
        report.Line();
        report.Line($"  Freeside: {_settings.FreesideUrl}");
        report.Line($"  Dixie:    {_settings.DixieUrl}");
        report.Line($"  Test Key: {_settings.TestKeyPath ?? "<none — JWT tests skipped>"}");
        report.Line($"  Retries:  {_settings.Retries}");
        report.Line();
    }

    async Task AutoSeedAsync(CancellationToken ct)
    {
        report.Line("Auto-seeding staging test data...");
        var result = await seeder.SeedAsync(_settings, ct);
        if (!result.Succeeded)
        {
            report.Line("WARNING: Test data seeding failed — continuing with manual config");
            foreach (var line in result.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Take(20))
            {
                report.Line("  " + line);
            }

            return;
        }

        string? Value(string name) => result.Output.Split('\n').Select(l => l.Trim())
            .Where(l => l.StartsWith(name + "=", StringComparison.Ordinal)).Select(l => l[(name.Length + 1)..]).FirstOrDefault(v => v.Length > 0);

        if (_settings.CommunityId is null && Value("COMMUNITY_ID") is { } community)
        {
            _settings = _settings with { CommunityId = community };
            report.Line($"  Using seeded COMMUNITY_ID={community}");
        }

        if (_settings.TestKeyPath is null && Value("TEST_KEY_PATH") is { } key && File.Exists(key))
        {
            _settings = _settings with { TestKeyPath = key };
            report.Line($"  Using seeded TEST_KEY={key}");
        }
    }

    // ---------------------------------------------------------------- P0-1 / P0-2

    async Task HealthAsync(CancellationToken ct)
    {
        await HealthCheckAsync("Freeside /health", Freeside + "/health", ct);
        await HealthCheckAsync("Dixie /api/health", Dixie + "/api/health", ct);
    }

    async Task HealthCheckAsync(string name, string url, CancellationToken ct)
    {
        var watch = Stopwatch.StartNew();
        var (outcome, attempts) = await WithRetryAsync(name, () => http.GetAsync(url, timings.HealthTimeout, null, ct), ct);
        var elapsed = watch.ElapsedMilliseconds;
        if (!outcome.Succeeded)
        {
            report.Line($"    {name}: {outcome.Describe()}");
            report.Fail("P0", "health", name, GateClass.PlatformBug, elapsed, "unreachable");
            return;
        }

        if (GateJson.Object(outcome.Body, out var problem) is not { } body)
        {
            report.Fail("P0", "health", name, GateClass.PlatformBug, elapsed, problem!);
            return;
        }

        var status = GateJson.Alt(body, "status") is { } s ? GateJson.Render(s) : "";
        var flake = attempts > 1 ? GateClass.Flake : GateClass.None;
        if (status is "healthy" or "degraded")
        {
            report.Pass("P0", "health", $"{name} (status: {status}{(flake.Length > 0 ? ", " + flake : "")})", elapsed, flake);
        }
        else
        {
            report.Fail("P0", "health", name, GateClass.PlatformBug, elapsed, $"unexpected status: {status}");
        }
    }

    async Task JwksAsync(CancellationToken ct)
    {
        var watch = Stopwatch.StartNew();
        var (outcome, attempts) = await WithRetryAsync("JWKS verification", () => http.GetAsync(Freeside + "/.well-known/jwks.json", timings.HealthTimeout, null, ct), ct);
        var elapsed = watch.ElapsedMilliseconds;
        if (!outcome.Succeeded || GateJson.Object(outcome.Body, out _) is not { } jwks)
        {
            if (!outcome.Succeeded)
            {
                report.Line($"    JWKS: {outcome.Describe()}");
            }

            report.Fail("P0", "jwks", "JWKS", GateClass.PlatformBug, elapsed, "unreachable or invalid JSON");
            return;
        }

        var keys = jwks.TryGetProperty("keys", out var k) && k.ValueKind == JsonValueKind.Array ? k : default;
        var count = keys.ValueKind == JsonValueKind.Array ? keys.GetArrayLength() : 0;
        var first = count > 0 ? keys[0] : default;
        var alg = first.ValueKind == JsonValueKind.Object && GateJson.Alt(first, "alg") is { } a ? GateJson.Render(a) : "";
        var kid = first.ValueKind == JsonValueKind.Object && GateJson.Alt(first, "kid") is { } i ? GateJson.Render(i) : "";
        var flake = attempts > 1 ? GateClass.Flake : GateClass.None;
        if (count >= 1 && alg == "ES256" && kid.Length > 0)
        {
            report.Pass("P0", "jwks", $"JWKS ({count} key(s), alg={alg}, kid={kid}{(flake.Length > 0 ? ", " + flake : "")})", elapsed, flake);
        }
        else if (count >= 1 && alg == "ES256")
        {
            report.Fail("P0", "jwks", $"JWKS ({count} key(s), alg={alg}, missing kid)", GateClass.PlatformBug, elapsed, "kid field required for key rotation");
        }
        else
        {
            report.Fail("P0", "jwks", "JWKS", GateClass.PlatformBug, elapsed, $"keys={count}, alg={alg}");
        }
    }

    /// <summary>§2.6: up to <c>--retries</c> attempts in total, 2 s apart; the attempt count tags FLAKE.</summary>
    async Task<(HttpOutcome Outcome, int Attempts)> WithRetryAsync(string name, Func<Task<HttpOutcome>> attempt, CancellationToken ct)
    {
        var total = Math.Max(1, _settings.Retries);
        HttpOutcome outcome = null!;
        for (var i = 1; i <= total; i++)
        {
            outcome = await attempt();
            if (outcome.Succeeded)
            {
                return (outcome, i);
            }

            if (i < total)
            {
                report.Line($"    Retry {i}/{total - 1} for {name}...");
                await timings.Delay(timings.RetryDelay, ct);
            }
        }

        return (outcome, total);
    }

    // ---------------------------------------------------------------- P0-3

    async Task JwtAndInvokeAsync(CancellationToken ct)
    {
        if (_settings.TestKeyPath is null)
        {
            report.Skip("P0", "jwt-roundtrip", "JWT round-trip", 0, NoKey);
            report.Skip("P0", "invoke", "Agent invoke", 0, NoKey);
            return;
        }

        var watch = Stopwatch.StartNew();
        try
        {
            _tokens = GateTokens.Load(_settings.TestKeyPath);
            _ = _tokens.Mint();
        }
        catch (Exception ex) when (ex is FormatException or IOException or UnauthorizedAccessException or System.Security.Cryptography.CryptographicException)
        {
            _tokens?.Dispose();
            _tokens = null;
            _keyUnusable = "JWT mint failed";
            report.Fail("P0", "jwt-roundtrip", "JWT mint", GateClass.PlatformBug, watch.ElapsedMilliseconds, "sign-test-jwt.mjs failed: " + ex.Message);
            report.Skip("P0", "invoke", "Agent invoke", 0, MissingKeyDetail);
            return;
        }

        report.Pass("P0", "jwt-roundtrip", "JWT mint (ES256)", watch.ElapsedMilliseconds);

        var successes = 0;
        long totalMs = 0;
        string? hazard = null;
        for (var i = 1; i <= 5; i++)
        {
            var outcome = await InvokeAsync(HelloBody, timings.InvokeTimeout, ct);
            totalMs += outcome.ElapsedMs;
            var (ok, problem) = CheckInvoke(outcome);
            successes += ok ? 1 : 0;
            if (!ok)
            {
                report.Line($"    Invoke {i}: {problem ?? outcome.Describe()}");
            }

            hazard ??= problem;
        }

        var failures = 5 - successes;
        var avg = totalMs / 5;
        if (successes == 5)
        {
            report.Pass("P0", "invoke", $"Agent invoke (5/5 pass, avg {avg}ms)", avg);
        }
        else if (hazard is not null)
        {
            report.Fail("P0", "invoke", $"Agent invoke ({successes}/5 pass)", GateClass.PlatformBug, avg, $"{failures} failures; {hazard}");
        }
        else if (successes >= 3)
        {
            report.Fail("P0", "invoke", $"Agent invoke ({successes}/5 pass)", GateClass.ExternalOutage, avg, $"{failures} failures (model API instability)");
        }
        else
        {
            report.Fail("P0", "invoke", $"Agent invoke ({successes}/5 pass)", GateClass.PlatformBug, avg, $"{failures} failures");
        }

        if (avg > 10_000)
        {
            report.Line($"    WARN  Average invoke latency {avg}ms exceeds 10s target");
        }
    }

    /// <summary>Success: 2xx and a JSON object with content, text or choices. The problem is set for a 2xx that breaks §2.7.</summary>
    static (bool Ok, string? Problem) CheckInvoke(HttpOutcome outcome)
    {
        if (!outcome.Succeeded)
        {
            return (false, null);
        }

        if (GateJson.Object(outcome.Body, out var problem) is not { } body)
        {
            return (false, problem);
        }

        return (GateJson.Has(body, "content") || GateJson.Has(body, "text") || GateJson.Has(body, "choices"), null);
    }

    Task<HttpOutcome> InvokeAsync(string body, TimeSpan timeout, CancellationToken ct) =>
        http.PostJsonAsync(InvokeUrl, body, _tokens!.Mint(), timeout, ct);

    Task<HttpOutcome[]> InvokeManyAsync(int count, string body, CancellationToken ct) =>
        Task.WhenAll(Enumerable.Range(0, count).Select(_ => Task.Run(() => InvokeAsync(body, timings.InvokeTimeout, ct), ct)));

    // ---------------------------------------------------------------- P0-4

    static string MissingDetail(bool key, bool community) => (key, community) switch
    {
        (false, false) => "no --test-key + no --community-id",
        (false, true) => "no --test-key",
        _ => "no --community-id",
    };

    string KeyCommunitySkipDetail => !HasKey && _settings.TestKeyPath is not null
        ? (HasCommunity ? MissingKeyDetail : MissingKeyDetail + " + no --community-id")
        : MissingDetail(HasKey, HasCommunity);

    /// <summary>Reads the budget with a fresh token. Reading is null when the call failed (Problem says why; Reached tells a bad body from no answer).</summary>
    async Task<(BudgetReading? Reading, string? Problem, bool Reached)> ReadBudgetAsync(CancellationToken ct)
    {
        var outcome = await http.GetAsync(BudgetUrl, timings.BudgetTimeout, _tokens!.Mint(), ct);
        if (!outcome.Succeeded)
        {
            return (null, $"could not fetch budget ({outcome.Describe()})", false);
        }

        var reading = BudgetReading.Parse(outcome.Body, out var problem);
        return (reading, problem, true);
    }

    async Task BudgetAsync(CancellationToken ct)
    {
        if (!HasKey || !HasCommunity)
        {
            report.Skip("P0", "budget", "Budget conservation", 0, KeyCommunitySkipDetail);
            return;
        }

        var watch = Stopwatch.StartNew();
        var (before, beforeProblem, reached) = await ReadBudgetAsync(ct);
        if (before is null)
        {
            report.Fail("P0", "budget", "Budget query", GateClass.PlatformBug, watch.ElapsedMilliseconds, reached ? beforeProblem! : "could not fetch budget");
            if (!reached)
            {
                report.Line($"    {beforeProblem}");
            }

            return;
        }

        var monthly = before.MonthlyBudgetCents;
        for (var i = 1; i <= 10; i++)
        {
            await InvokeAsync(HiBody, timings.InvokeTimeout, ct);
            var (now, problem, _) = await ReadBudgetAsync(ct);
            if (now is null)
            {
                // The original skipped this iteration's check silently; an unreadable budget is itself a failure.
                report.Fail("P0", "budget", "Budget conservation", GateClass.PlatformBug, watch.ElapsedMilliseconds, $"budget re-read failed at iteration {i}: {problem}");
                return;
            }

            if (now.Total > monthly)
            {
                report.Line($"    VIOLATION at iteration {i}: committed({now.Committed}) + reserved({now.Reserved}) = {now.Total} > budget({monthly})");
                report.Fail("P0", "budget", "Budget conservation", GateClass.PlatformBug, watch.ElapsedMilliseconds, "invariant violated");
                return;
            }
        }

        report.Pass("P0", "budget", "Budget conservation (10 sequential, invariant held)", watch.ElapsedMilliseconds);

        report.Line();
        report.Line("  Running concurrent budget test (5 parallel requests)...");
        var concurrent = Stopwatch.StartNew();
        await InvokeManyAsync(5, HiBody, ct);
        var (after, afterProblem, _) = await ReadBudgetAsync(ct);
        if (after is null)
        {
            report.Fail("P0", "budget", "Budget conservation (concurrent)", GateClass.PlatformBug, concurrent.ElapsedMilliseconds, $"budget re-read failed after the concurrent requests: {afterProblem}");
        }
        else if (after.Total > monthly)
        {
            report.Line($"    CONCURRENT VIOLATION: committed({after.Committed}) + reserved({after.Reserved}) = {after.Total} > budget({monthly})");
            report.Fail("P0", "budget", "Budget conservation (concurrent)", GateClass.PlatformBug, concurrent.ElapsedMilliseconds, "invariant violated under concurrency");
        }
        else
        {
            report.Pass("P0", "budget", "Budget conservation (5 concurrent, invariant held)", concurrent.ElapsedMilliseconds);
        }
    }

    // ---------------------------------------------------------------- chaos

    async Task ChaosAsync(CancellationToken ct)
    {
        report.Line("  Scenario 1: Duplicate finalization (idempotency test)...");
        var watch = Stopwatch.StartNew();
        await InvokeAsync(DuplicateBody, timings.DuplicateInvokeTimeout, ct);
        await InvokeAsync(DuplicateBody, timings.DuplicateInvokeTimeout, ct);
        var (dup, dupProblem, dupReached) = await ReadBudgetAsync(ct);
        var elapsed = watch.ElapsedMilliseconds;
        if (dup is null)
        {
            if (dupReached)
            {
                report.Fail("P1", "chaos", "Chaos: duplicate finalization", GateClass.PlatformBug, elapsed, dupProblem!);
            }
            else
            {
                report.Skip("P1", "chaos", "Chaos: duplicate finalization", elapsed, "budget query failed");
            }
        }
        else if (dup.Total <= dup.MonthlyBudgetCents)
        {
            report.Pass("P1", "chaos", "Chaos: duplicate finalization (invariant held)", elapsed);
        }
        else
        {
            report.Fail("P1", "chaos", "Chaos: duplicate finalization", GateClass.PlatformBug, elapsed, $"double-charge detected: total={dup.Total} > limit={dup.MonthlyBudgetCents}");
        }

        report.Line("  Scenario 2: Over-budget request (402/429 expected)...");
        watch.Restart();
        var over = await InvokeAsync(OverBudgetBody, timings.InvokeTimeout, ct);
        elapsed = watch.ElapsedMilliseconds;
        var code = over.Status == 0 || over.TimedOut ? "000" : over.Status.ToString("000", System.Globalization.CultureInfo.InvariantCulture);
        if (code is "402" or "429")
        {
            report.Pass("P1", "chaos", $"Chaos: over-budget request (HTTP {code} — correctly rejected)", elapsed);
        }
        else if (code == "200")
        {
            report.Pass("P1", "chaos", "Chaos: over-budget request (HTTP 200 — budget had headroom)", elapsed);
        }
        else
        {
            report.Fail("P1", "chaos", $"Chaos: over-budget request (HTTP {code})", GateClass.PlatformBug, elapsed, "unexpected status code");
        }

        report.Line("  Scenario 3: Concurrent burst (10 parallel) + conservation check...");
        watch.Restart();
        await InvokeManyAsync(10, HiBody, ct);
        var (burst, burstProblem, burstReached) = await ReadBudgetAsync(ct);
        elapsed = watch.ElapsedMilliseconds;
        if (burst is null)
        {
            if (burstReached)
            {
                report.Fail("P1", "chaos", "Chaos: 10-concurrent burst", GateClass.PlatformBug, elapsed, burstProblem!);
            }
            else
            {
                report.Skip("P1", "chaos", "Chaos: 10-concurrent burst", elapsed, "budget query failed after burst");
            }
        }
        else if (burst.Total <= burst.MonthlyBudgetCents)
        {
            report.Pass("P1", "chaos", $"Chaos: 10-concurrent burst (invariant held, total={burst.Total}/{burst.MonthlyBudgetCents})", elapsed);
        }
        else
        {
            report.Fail("P1", "chaos", "Chaos: 10-concurrent burst", GateClass.PlatformBug, elapsed, $"conservation violated: total={burst.Total} > limit={burst.MonthlyBudgetCents}");
        }
    }

    // ---------------------------------------------------------------- P1-5

    /// <summary>Anonymous reputation query; Body is null with a Problem when it fails (no answer, ≥ 400, not an object, or no score).</summary>
    async Task<(JsonElement? Body, string? Problem)> QueryReputationAsync(string routingKey, CancellationToken ct)
    {
        var outcome = await http.GetAsync($"{Dixie}/api/reputation/query?routingKey={routingKey}", timings.ReputationTimeout, null, ct);
        if (!outcome.Succeeded)
        {
            return (null, null);
        }

        if (GateJson.Object(outcome.Body, out var problem) is not { } body)
        {
            return (null, problem);
        }

        return GateJson.Has(body, "score") || GateJson.Has(body, "reputation") ? (body, null) : (null, null);
    }

    static string Score(JsonElement body, string fallback) => GateJson.Alt(body, "score", "reputation") is { } s ? GateJson.Render(s) : fallback;

    /// <summary><c>.sample_count</c> when it is a whole number, else null.</summary>
    static long? SampleCount(JsonElement body) =>
        GateJson.Alt(body, "sample_count") is { ValueKind: JsonValueKind.Number } n && n.TryGetInt64(out var count) ? count : null;

    /// <summary>
    /// Quality events were recorded when sample_count grew. A score that moved proves nothing on its own: it decays with
    /// time. Only a reputation service that does not report sample_count at all (the reference dixie answers just
    /// <c>{"score":…}</c>) is judged by its score, as the reference gate does.
    /// </summary>
    static bool Recorded(string baseline, string updated, long? before, long? after) =>
        before is null && after is null ? updated != baseline : after is { } a && a > (before ?? 0);

    static string Render(long? sampleCount) => sampleCount?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "?";

    async Task ReputationAsync(CancellationToken ct)
    {
        var watch = Stopwatch.StartNew();
        var (body, problem) = await QueryReputationAsync("nft:test", ct);
        if (body is { } b)
        {
            report.Pass("P1", "reputation", $"Reputation query (score: {Score(b, "?")})", watch.ElapsedMilliseconds);
        }
        else
        {
            report.Fail("P1", "reputation", "Reputation query", GateClass.PlatformBug, watch.ElapsedMilliseconds, problem ?? "unreachable or auth required");
        }
    }

    // ---------------------------------------------------------------- P1-6

    async Task SseAsync(CancellationToken ct)
    {
        if (!HasKey)
        {
            report.Skip("P1", "sse", "SSE streaming", 0, MissingKeyDetail);
            return;
        }

        var watch = Stopwatch.StartNew();
        var outcome = await http.SendAsync(HttpMethod.Post, InvokeUrl, SseBody, _tokens!.Mint(), timings.SseTimeout, "text/event-stream", null, keepPartial: true, ct);
        var elapsed = watch.ElapsedMilliseconds;
        // curl -sf prints nothing for a status of 400 or more; what arrived before the time limit counts.
        var output = outcome.Status is >= 200 and < 400 ? outcome.Body : "";
        var events = output.Split('\n').Count(line => line.StartsWith("data:", StringComparison.Ordinal));
        if (events > 0)
        {
            report.Pass("P1", "sse", $"SSE streaming ({events} data events)", elapsed);
        }
        else if (output.Length > 0)
        {
            report.Fail("P1", "sse", "SSE streaming", GateClass.PlatformBug, elapsed, "response received but no SSE data: events");
        }
        else
        {
            report.Line($"    SSE: {outcome.Describe()}");
            report.Fail("P1", "sse", "SSE streaming", GateClass.ExternalOutage, elapsed, "no response (timeout or model API)");
        }
    }

    // ---------------------------------------------------------------- P1-7

    async Task<(string Model, string? Problem)> InvokeForModelAsync(CancellationToken ct)
    {
        var outcome = await InvokeAsync(AutopoieticBody, timings.InvokeTimeout, ct);
        if (!outcome.Succeeded)
        {
            return ("unknown", null);
        }

        return GateJson.Object(outcome.Body, out var problem) is { } body
            ? (GateJson.Alt(body, "model", "meta.model") is { } m ? GateJson.Render(m) : "unknown", null)
            : ("unknown", problem);
    }

    async Task AutopoieticAsync(CancellationToken ct)
    {
        const string Name = "Autopoietic loop trace";
        if (!HasKey || !HasCommunity)
        {
            report.Skip("P1", "autopoietic", Name, 0, KeyCommunitySkipDetail);
            return;
        }

        report.Line("  Step 1: Querying baseline reputation...");
        var routingKey = _settings.TestNftContract is { } contract && _settings.TestNftTokenId is { } token ? $"nft:{contract}:{token}" : "nft:test";
        var watch = Stopwatch.StartNew();
        var (baselineBody, _) = await QueryReputationAsync(routingKey, ct);
        if (baselineBody is not { } baselineJson)
        {
            report.Skip("P1", "autopoietic", Name, watch.ElapsedMilliseconds, "reputation system not reachable");
            return;
        }

        var baseline = Score(baselineJson, "0");
        var baselineSamples = SampleCount(baselineJson);
        report.Line($"    Baseline score: {baseline} (sample_count: {Render(baselineSamples)})");

        report.Line("  Step 2: Invoking agent 3x to generate usage signals...");
        var models = new List<string>();
        for (var i = 1; i <= 3; i++)
        {
            var (model, problem) = await InvokeForModelAsync(ct);
            if (problem is not null)
            {
                report.Fail("P1", "autopoietic", Name, GateClass.PlatformBug, watch.ElapsedMilliseconds, "invoke: " + problem);
                return;
            }

            models.Add(model);
            report.Line($"    Invoke {i}: model={model}");
        }

        report.Line("  Step 3: Submitting quality events...");
        var accepted = 0;
        foreach (var quality in new[] { "good", "excellent", "good" })
        {
            var body = $$"""{"routingKey":"{{routingKey}}","quality":"{{quality}}","source":"smoke-test"}""";
            var outcome = await http.PostJsonAsync(Freeside + "/api/agents/quality", body, _tokens!.Mint(), timings.QualityTimeout, ct);
            if (outcome.Succeeded)
            {
                accepted++;
                report.Line($"    Submitted: {quality}");
            }
            else
            {
                report.Line($"    Failed to submit: {quality} ({outcome.Describe()})");
            }
        }

        if (accepted == 0)
        {
            report.Fail("P1", "autopoietic", Name, GateClass.PlatformBug, watch.ElapsedMilliseconds, "quality events rejected (0/3 accepted)");
            return;
        }

        report.Line($"  Step 4: Waiting {timings.AutopoieticWait.TotalSeconds:0.#}s for reputation propagation (SDD §FR-7)...");
        await timings.Delay(timings.AutopoieticWait, ct);

        report.Line("  Step 5: Querying updated reputation...");
        var (updatedBody, updatedProblem) = await QueryReputationAsync(routingKey, ct);
        if (updatedBody is not { } updatedJson)
        {
            report.Fail("P1", "autopoietic", Name, GateClass.PlatformBug, watch.ElapsedMilliseconds,
                "reputation unreachable after quality events" + (updatedProblem is null ? "" : $" ({updatedProblem})"));
            return;
        }

        var updated = Score(updatedJson, "0");
        var updatedSamples = SampleCount(updatedJson);
        report.Line($"    Updated score: {updated} (was: {baseline}), sample_count: {Render(baselineSamples)}→{Render(updatedSamples)}");

        report.Line("  Step 6: Invoking agent again — checking for routing change...");
        var (postModel, postProblem) = await InvokeForModelAsync(ct);
        if (postProblem is not null)
        {
            report.Fail("P1", "autopoietic", Name, GateClass.PlatformBug, watch.ElapsedMilliseconds, "invoke: " + postProblem);
            return;
        }

        var firstModel = models[0];
        report.Line($"    Post-quality model: {postModel} (pre-quality: {firstModel})");
        var routingChanged = postModel != firstModel && postModel != "unknown";
        // The reference's rule: the loop shows in the reputation or in routing (a model that is not the first one's).
        if (Recorded(baseline, updated, baselineSamples, updatedSamples) || routingChanged)
        {
            var detail = $"score: {baseline}→{updated}" + (routingChanged ? $", routing: {firstModel}→{postModel}" : "");
            report.Pass("P1", "autopoietic", $"{Name} ({detail})", watch.ElapsedMilliseconds);
            return;
        }

        report.Line($"    No new samples recorded — waiting additional {timings.AutopoieticExtraWait.TotalSeconds:0.#}s...");
        await timings.Delay(timings.AutopoieticExtraWait, ct);
        var (finalBody, finalProblem) = await QueryReputationAsync(routingKey, ct);
        if (finalBody is not { } finalJson)
        {
            // The original compared an empty string here and called it a change; an unreachable oracle is a failure.
            report.Fail("P1", "autopoietic", Name, GateClass.PlatformBug, watch.ElapsedMilliseconds,
                "reputation unreachable after 30s" + (finalProblem is null ? "" : $" ({finalProblem})"));
            return;
        }

        var final = Score(finalJson, "0");
        if (Recorded(baseline, final, baselineSamples, SampleCount(finalJson)))
        {
            report.Pass("P1", "autopoietic", $"{Name} (score: {baseline}→{final}, slow propagation)", watch.ElapsedMilliseconds);
        }
        else
        {
            report.Skip("P1", "autopoietic", Name, watch.ElapsedMilliseconds,
                $"quality events accepted ({accepted}) but score unchanged after 30s — reputation threshold not met");
        }
    }

    // ---------------------------------------------------------------- P1-8

    [GeneratedRegex("x-payment-required|x-price|x402", RegexOptions.IgnoreCase)]
    private static partial Regex PaymentHeader();

    async Task X402Async(CancellationToken ct)
    {
        if (!HasKey)
        {
            report.Skip("P1", "x402", "x402 payment flow", 0, MissingKeyDetail);
            return;
        }

        var url = Freeside + "/api/v1/x402/invoke";
        var watch = Stopwatch.StartNew();
        var outcome = await http.PostJsonAsync(url, X402Body, _tokens!.Mint(), timings.X402Timeout, ct);
        var elapsed = watch.ElapsedMilliseconds;
        if (outcome.Status == 0)
        {
            report.Fail("P1", "x402", "x402 402 response", GateClass.PlatformBug, elapsed, $"expected 402, got no response ({outcome.Error})");
            return;
        }

        if (outcome.Status == 404)
        {
            report.Skip("P1", "x402", "x402 endpoint", elapsed, "x402 endpoint not deployed (404)");
            return;
        }

        if (outcome.Status != 402)
        {
            report.Fail("P1", "x402", "x402 402 response", GateClass.PlatformBug, elapsed, $"expected 402, got {outcome.Status}");
            return;
        }

        if (outcome.HeaderLines.Skip(1).Any(line => PaymentHeader().IsMatch(line)))
        {
            report.Pass("P1", "x402", "x402 402 response with payment headers", elapsed);
        }
        else
        {
            report.Fail("P1", "x402", "x402 402 response", GateClass.PlatformBug, elapsed, "402 returned but missing x402 payment headers");
        }

        if (_settings.SepoliaRpcUrl is not { } rpc || _settings.StagingWalletKey is not { } wallet)
        {
            report.Line("  SKIP: On-chain payment — SEPOLIA_RPC_URL and STAGING_WALLET_KEY not set");
            report.Line("    To enable: export SEPOLIA_RPC_URL=<rpc> STAGING_WALLET_KEY=<key>");
            return;
        }

        report.Line("  Step 2: On-chain payment (Base Sepolia)...");
        await OnChainAsync(url, outcome.Body, rpc, wallet, ct);
    }

    async Task OnChainAsync(string url, string body402, string rpc, string wallet, CancellationToken ct)
    {
        var requirement = GateJson.Object(body402, out var problem);
        if (requirement is not { } required)
        {
            report.Fail("P1", "x402", "x402 on-chain payment", GateClass.PlatformBug, 0, "402 body: " + problem!.Replace("2xx response", "response", StringComparison.Ordinal));
            return;
        }

        var address = GateJson.Alt(required, "paymentAddress", "address") is { } a ? GateJson.Render(a) : "";
        var amount = GateJson.Alt(required, "amount", "price") is { } p ? GateJson.Render(p) : "";
        if (address.Length == 0 || amount.Length == 0)
        {
            report.Skip("P1", "x402", "x402 on-chain payment", 0, "402 response missing payment address or amount");
            return;
        }

        var asset = GateJson.Alt(required, "asset") is { } direct ? GateJson.Render(direct)
            : required.TryGetProperty("accepts", out var accepts) && accepts.ValueKind == JsonValueKind.Array && accepts.GetArrayLength() > 0
              && accepts[0].ValueKind == JsonValueKind.Object && GateJson.Alt(accepts[0], "asset") is { } nested ? GateJson.Render(nested) : null;

        var watch = Stopwatch.StartNew();
        string tx;
        try
        {
            tx = await payer.PayAsync(rpc, wallet, address, amount, asset, ct);
            report.Line($"    Transaction: {tx}");
        }
        catch (X402PaymentException ex)
        {
            report.Line($"    Payment failed: {ex.Message}");
            report.Fail("P1", "x402", "x402 on-chain payment", GateClass.ExternalOutage, watch.ElapsedMilliseconds, "transaction failed (check Sepolia RPC)");
            return;
        }

        // Stricter than the original, which passed any non-empty answer "accepted (no credit note)": a payment that
        // freeside does not answer with 2xx and a credit note was not credited, so the step fails.
        // The proof carries the payer's signature of the transaction hash (freeside requires it by default: a mined hash
        // is public, and without it whoever presents it first is credited). A server that does not ask for it ignores it.
        var proofHeaders = new Dictionary<string, string>
        {
            ["X-Payment-Proof"] = tx,
            [Arrakis.Freeside.Payments.X402Headers.XPaymentProofSignature] = new Nethereum.Signer.EthereumMessageSigner().EncodeUTF8AndSign(
                Arrakis.Freeside.Payments.LegacyProof.Message(tx), new Nethereum.Signer.EthECKey(wallet)),
        };
        var paid = await http.PostJsonAsync(url, X402Body, _tokens!.Mint(), timings.X402PaidTimeout, ct, proofHeaders);
        var elapsed = watch.ElapsedMilliseconds;
        if (paid.Status == 0 || paid.TimedOut || paid.Body.Length == 0)
        {
            report.Line($"    Paid request: {paid.Describe()}");
            report.Fail("P1", "x402", "x402 on-chain settlement", GateClass.PlatformBug, elapsed, "payment submitted but no response");
            return;
        }

        // §2.9: "returns 2xx with creditNote" (the original's curl -sf took any 2xx).
        if (paid.Status is < 200 or >= 300)
        {
            var answer = GateJson.Object(paid.Body, out _) is { } problemBody && GateJson.Alt(problemBody, "error") is { } code
                ? GateJson.Render(code) + (GateJson.Alt(problemBody, "detail") is { } detail ? ": " + GateJson.Render(detail) : "")
                : GateJson.Snippet(paid.Body);
            report.Fail("P1", "x402", "x402 on-chain settlement", GateClass.PlatformBug, elapsed, $"payment {tx} not credited: HTTP {paid.Status} {answer}");
            return;
        }

        if (GateJson.Object(paid.Body, out var paidProblem) is not { } receipt)
        {
            report.Fail("P1", "x402", "x402 on-chain settlement", GateClass.PlatformBug, elapsed, paidProblem!);
            return;
        }

        // jq .creditNote // .credit_note: any value but null or false is the note (an object, or just its id).
        if (GateJson.Alt(receipt, "creditNote", "credit_note") is { } note)
        {
            string Field(params string[] names) => note.ValueKind == JsonValueKind.Object && GateJson.Alt(note, names) is { } v ? GateJson.Render(v) : "?";
            var id = note.ValueKind == JsonValueKind.Object ? Field("id") : GateJson.Render(note);
            report.Line($"    Credit note: {id} ({Field("amountMicro", "amount_micro")} micro-USD, lot {Field("lotId", "lot_id")}, community {Field("communityId", "community_id")})");
            report.Pass("P1", "x402", "x402 on-chain settlement + credit note issued", elapsed);
        }
        else
        {
            report.Fail("P1", "x402", "x402 on-chain settlement", GateClass.PlatformBug, elapsed, $"payment {tx} accepted but no credit note issued");
        }
    }
}
