using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Arrakis.Shared.Caching;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Arrakis.Cli.Tests.Gate;

/// <summary>How the loopback deployment misbehaves; the defaults speak the §2.9 contract correctly.</summary>
internal sealed record FakeBehaviour
{
    /// <summary>The first N freeside /health calls stall for <see cref="SlowHealthDelay"/> before answering.</summary>
    public int SlowHealthCalls { get; init; }

    public TimeSpan SlowHealthDelay { get; init; } = TimeSpan.FromSeconds(3);

    public bool OmitKid { get; init; }

    /// <summary>Freeside's /health answers 302 to dixie's healthy /api/health (curl -sf without -L judges the 302 itself).</summary>
    public bool HealthRedirects { get; init; }

    public bool InvokeNotJson { get; init; }

    public bool BudgetFloat { get; init; }

    /// <summary>Budget reads after the first answer 500 (the re-read the original skipped silently).</summary>
    public bool BudgetRereadFails { get; init; }

    public int OverBudgetStatus { get; init; } = 402;

    public bool SseWithoutFrames { get; init; }

    public bool X402NotFound { get; init; }

    /// <summary>The paid retry answers 200 without a credit note.</summary>
    public bool X402NoCreditNote { get; init; }

    /// <summary>The paid retry's status (any 2xx is success in the contract, §2.9).</summary>
    public int X402PaidStatus { get; init; } = 200;

    /// <summary>The paid retry names its credit note by id (<c>"creditNote":"cn-1"</c>) instead of an object.</summary>
    public bool X402CreditNoteId { get; init; }

    public long MonthlyBudgetCents { get; init; } = 10_000;

    /// <summary>Quality events are answered 202 but never recorded: sample_count stays put and the score only decays with time.</summary>
    public bool QualityEventsLost { get; init; }

    /// <summary>The reputation answer is <c>{"score":…}</c> alone, like the reference dixie's (no sample_count).</summary>
    public bool ScoreOnly { get; init; }
}

/// <summary>
/// A deliberately simple freeside + dixie on one loopback Kestrel port. It verifies every bearer token with the platform's
/// own <see cref="TokenVerifier"/> (kid-less ES256, iss/aud arrakis, one use per jti) and records what the gate sent.
/// </summary>
internal sealed class FakeDeployment : IAsyncDisposable
{
    readonly WebApplication _app;
    readonly FakeBehaviour _behaviour;
    readonly TokenVerifier _verifier;
    readonly TokenPolicy _policy;
    readonly ConcurrentDictionary<string, byte> _idempotency = new();
    readonly Lock _lock = new();
    long _committed;
    int _healthCalls;
    int _budgetReads;
    int _qualityEvents;
    int _reputationQueries;

    FakeDeployment(WebApplication app, FakeBehaviour behaviour, ECDsa key, string url)
    {
        _app = app;
        _behaviour = behaviour;
        Url = url;
        var (x, y) = SigningKey.PublicPoint(key);
        Key = new SigningKey("fake-kid-1", KeyStatus.Active, x, y, DateTimeOffset.UtcNow, null, DateTimeOffset.UtcNow, null, null, null);
        var meters = new ServiceCollection().AddMetrics().BuildServiceProvider().GetRequiredService<IMeterFactory>();
        _verifier = new TokenVerifier(new MemoryReplayCache(TimeProvider.System), TimeProvider.System, NullLogger<TokenVerifier>.Instance, meters);
        _policy = new TokenPolicy("user", new Dictionary<string, IKeySource> { ["arrakis"] = new StaticKeySource(Key) }, ["arrakis"], TimeSpan.FromMinutes(15));
    }

    public string Url { get; }

    public SigningKey Key { get; }

    public ConcurrentQueue<(string Method, string Path, string Body)> Requests { get; } = new();

    public ConcurrentQueue<string> Tokens { get; } = new();

    public ConcurrentQueue<string> PaymentProofs { get; } = new();

    public int RejectedTokens;

    public static Task<FakeDeployment> StartAsync(FakeBehaviour behaviour, ECDsa key) =>
        TestStorage.RetryOnPortClashAsync(() => StartOnceAsync(behaviour, key));

    static async Task<FakeDeployment> StartOnceAsync(FakeBehaviour behaviour, ECDsa key)
    {
        var url = $"http://127.0.0.1:{TestStorage.FreePort()}";
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls(url);
        builder.Logging.ClearProviders();
        var app = builder.Build();
        var fake = new FakeDeployment(app, behaviour, key, url);
        fake.Map(app);
        await app.StartAsync();
        return fake;
    }

    void Map(WebApplication app)
    {
        app.Use(async (context, next) =>
        {
            context.Request.EnableBuffering();
            var body = await new StreamReader(context.Request.Body, Encoding.UTF8).ReadToEndAsync();
            context.Request.Body.Position = 0;
            Requests.Enqueue((context.Request.Method, context.Request.Path + context.Request.QueryString, body));
            await next(context);
        });

        app.MapGet("/health", async context =>
        {
            if (_behaviour.HealthRedirects)
            {
                context.Response.Redirect("/api/health");
                return;
            }

            if (Interlocked.Increment(ref _healthCalls) <= _behaviour.SlowHealthCalls)
            {
                await Task.Delay(_behaviour.SlowHealthDelay, context.RequestAborted);
            }

            await context.Response.WriteAsJsonAsync(new { status = "healthy", version = "fake" });
        });
        app.MapGet("/api/health", () => Results.Json(new { status = "healthy" }));
        app.MapGet("/.well-known/jwks.json", () => Results.Json(new
        {
            keys = new[]
            {
                _behaviour.OmitKid
                    ? (object)new { kty = "EC", crv = "P-256", x = Key.X, y = Key.Y, use = "sig", alg = "ES256" }
                    : new { kty = "EC", crv = "P-256", x = Key.X, y = Key.Y, kid = Key.Kid, use = "sig", alg = "ES256" },
            },
        }));

        app.MapPost("/api/agents/invoke", async context =>
        {
            if (!await AuthorizeAsync(context))
            {
                return;
            }

            using var doc = JsonDocument.Parse(await ReadBodyAsync(context));
            var model = doc.RootElement.GetProperty("model").GetString();
            var stream = doc.RootElement.TryGetProperty("stream", out var s) && s.ValueKind == JsonValueKind.True;
            if (model == "architect")
            {
                context.Response.StatusCode = _behaviour.OverBudgetStatus;
                await context.Response.WriteAsJsonAsync(new { error = "BUDGET_EXCEEDED", detail = "over budget" });
                return;
            }

            if (doc.RootElement.TryGetProperty("idempotency_key", out var key) && !_idempotency.TryAdd(key.GetString()!, 0))
            {
                await context.Response.WriteAsJsonAsync(new { content = "replayed", model = "fake-cheap-1" });
                return;
            }

            lock (_lock)
            {
                _committed += 1;
            }

            if (_behaviour.InvokeNotJson)
            {
                context.Response.ContentType = "text/plain";
                await context.Response.WriteAsync("OK");
                return;
            }

            if (stream && !_behaviour.SseWithoutFrames)
            {
                context.Response.ContentType = "text/event-stream";
                foreach (var (id, type, data) in new[] { ("1", "delta", """{"text":"Hi"}"""), ("2", "delta", """{"text":" there"}"""), ("3", "done", """{"model":"fake-cheap-1"}""") })
                {
                    await context.Response.WriteAsync($"id: {id}\nevent: {type}\ndata: {data}\n\n");
                    await context.Response.Body.FlushAsync();
                }

                return;
            }

            await context.Response.WriteAsJsonAsync(new { content = "Hello there friend", model = _qualityEvents > 0 ? "fake-cheap-2" : "fake-cheap-1" });
        });

        app.MapGet("/api/v1/communities/{id}/budget", async (HttpContext context, string id) =>
        {
            if (!await AuthorizeAsync(context))
            {
                return;
            }

            if (Interlocked.Increment(ref _budgetReads) > 1 && _behaviour.BudgetRereadFails)
            {
                context.Response.StatusCode = 500;
                await context.Response.WriteAsJsonAsync(new { error = "INTERNAL", detail = "boom" });
                return;
            }

            long committed;
            lock (_lock)
            {
                committed = _committed;
            }

            if (_behaviour.BudgetFloat)
            {
                context.Response.ContentType = "application/json";
                await context.Response.WriteAsync($$"""{"communityId":"{{id}}","monthlyBudgetCents":{{_behaviour.MonthlyBudgetCents}},"committed":{{committed}}.5,"spentCents":{{committed}}.5,"reserved":0}""");
                return;
            }

            await context.Response.WriteAsJsonAsync(new { communityId = id, monthlyBudgetCents = _behaviour.MonthlyBudgetCents, committed, spentCents = committed, reserved = 0L, available = _behaviour.MonthlyBudgetCents - committed, percentUsed = 0 });
        });

        app.MapPost("/api/agents/quality", async context =>
        {
            if (!await AuthorizeAsync(context))
            {
                return;
            }

            if (!_behaviour.QualityEventsLost)
            {
                Interlocked.Increment(ref _qualityEvents);
            }

            context.Response.StatusCode = 202;
            await context.Response.WriteAsJsonAsync(new { event_id = Guid.NewGuid().ToString() });
        });

        app.MapGet("/api/reputation/query", (string routingKey) =>
        {
            var queries = Interlocked.Increment(ref _reputationQueries);
            if (_behaviour.QualityEventsLost)
            {
                // Three old events, fading a little more on every read.
                return Results.Json(new { score = Math.Round(0.8 - (0.01 * queries), 2), sample_count = 3, routingKey });
            }

            if (_behaviour.ScoreOnly)
            {
                return Results.Json(new { score = _qualityEvents == 0 ? (double?)null : 0.5 + (0.1 * _qualityEvents) });
            }

            return _qualityEvents == 0
                ? Results.Json(new { score = (double?)null, sample_count = 0, routingKey })
                : Results.Json(new { score = 0.5 + (0.1 * _qualityEvents), sample_count = _qualityEvents, routingKey });
        });

        app.MapPost("/api/v1/x402/invoke", async context =>
        {
            if (_behaviour.X402NotFound)
            {
                context.Response.StatusCode = 404;
                await context.Response.WriteAsJsonAsync(new { error = "NOT_FOUND", detail = "no route" });
                return;
            }

            if (!await AuthorizeAsync(context))
            {
                return;
            }

            if (context.Request.Headers.TryGetValue("X-Payment-Proof", out var proof))
            {
                PaymentProofs.Enqueue(proof.ToString());
                context.Response.StatusCode = _behaviour.X402PaidStatus;
                await (_behaviour.X402NoCreditNote ? context.Response.WriteAsJsonAsync(new { content = "paid" })
                    : _behaviour.X402CreditNoteId ? context.Response.WriteAsJsonAsync(new { content = "paid", creditNote = "cn-1" })
                    : context.Response.WriteAsJsonAsync(new { content = "paid", creditNote = new { id = "cn-1", amount_micro = 10 } }));
                return;
            }

            context.Response.StatusCode = 402;
            context.Response.Headers["X-Payment-Required"] = "true";
            context.Response.Headers["X-Price"] = "1000";
            await context.Response.WriteAsJsonAsync(new { x402Version = 1, paymentAddress = "0x00000000000000000000000000000000000000a1", amount = "1000" });
        });
    }

    static async Task<string> ReadBodyAsync(HttpContext context)
    {
        context.Request.Body.Position = 0;
        return await new StreamReader(context.Request.Body, Encoding.UTF8).ReadToEndAsync();
    }

    async Task<bool> AuthorizeAsync(HttpContext context)
    {
        var header = context.Request.Headers.Authorization.ToString();
        var token = header.StartsWith("Bearer ", StringComparison.Ordinal) ? header["Bearer ".Length..] : null;
        var result = await _verifier.VerifyAsync(token, _policy, context.RequestAborted);
        if (token is not null)
        {
            Tokens.Enqueue(token);
        }

        if (result.Succeeded)
        {
            return true;
        }

        Interlocked.Increment(ref RejectedTokens);
        context.Response.StatusCode = 401;
        await context.Response.WriteAsJsonAsync(new { error = "UNAUTHORIZED", detail = result.Failure });
        return false;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    sealed class StaticKeySource(SigningKey key) : IKeySource
    {
        public ValueTask<IReadOnlyList<SigningKey>> GetKeysAsync(string? kid, CancellationToken ct) =>
            ValueTask.FromResult<IReadOnlyList<SigningKey>>(kid is null || kid == key.Kid ? [key] : []);
    }
}
