using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Arrakis.Dixie;
using Arrakis.Freeside;
using Arrakis.Shared.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Arrakis.Shared.Tests.Hosting;

public sealed class HealthTests
{
    static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(30) };

    static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Every_service_answers_liveness_as_json_without_a_token_and_without_running_a_check()
    {
        var counting = new CountingHealth();
        await using var platform = await Platform.StartAsync(configure: (_, b) => b.Services.AddSingleton<IHealthContributor>(counting));
        foreach (var (service, url) in new[] { ("freeside", platform.FreesideUrl), ("finn", platform.FinnUrl), ("dixie", platform.DixieUrl) })
        {
            using var response = await Http.GetAsync(url + "/health/live", Ct);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
            var body = await response.Content.ReadFromJsonAsync<JsonElement>(Ct);
            Assert.Equal(["status", "service", "version", "uptime_seconds"], body.EnumerateObject().Select(p => p.Name));
            Assert.Equal("alive", body.GetProperty("status").GetString());
            Assert.Equal(service, body.GetProperty("service").GetString());
            Assert.Equal(HealthApi.Version, body.GetProperty("version").GetString());
            Assert.True(body.GetProperty("uptime_seconds").GetInt64() >= 0);
        }

        Assert.Equal(0, counting.Calls);
        using var health = await Http.GetAsync(platform.FreesideUrl + "/health", Ct);
        Assert.Equal(1, counting.Calls); // the same contributor does run on the health route

        // Monitors probe with HEAD: the same status and headers as GET, and no body.
        foreach (var path in new[] { "/health/live", "/health", "/.well-known/jwks.json" })
        {
            using var head = await Http.SendAsync(new HttpRequestMessage(HttpMethod.Head, platform.FreesideUrl + path), Ct);
            Assert.True(head.StatusCode == HttpStatusCode.OK, $"HEAD {path}: {head.StatusCode}");
            Assert.Equal("application/json", head.Content.Headers.ContentType?.MediaType);
            Assert.Empty(await head.Content.ReadAsByteArrayAsync(Ct));
        }
    }

    [Fact]
    public async Task The_scrape_answers_only_its_exact_path_which_the_load_balancer_can_block()
    {
        await using var platform = await Platform.StartAsync();
        var uri = new Uri(platform.FreesideUrl);

        // An HTTP/1.1 request with the target exactly as written (HttpClient would decode "%6D" before sending).
        async Task<string> StatusLineAsync(string target)
        {
            using var tcp = new System.Net.Sockets.TcpClient();
            await tcp.ConnectAsync(uri.Host, uri.Port, Ct);
            await using var stream = tcp.GetStream();
            await stream.WriteAsync(System.Text.Encoding.ASCII.GetBytes($"GET {target} HTTP/1.1\r\nHost: {uri.Authority}\r\nConnection: close\r\n\r\n"), Ct);
            using var reader = new StreamReader(stream);
            return (await reader.ReadLineAsync(Ct))!;
        }

        Assert.Equal("HTTP/1.1 200 OK", await StatusLineAsync("/metrics"));
        Assert.Equal("HTTP/1.1 200 OK", await StatusLineAsync("/metrics?name[]=x"));
        foreach (var target in new[] { "/METRICS", "/Metrics", "/metrics/", "/%6Detrics", "/%6detrics" })
        {
            Assert.Equal("HTTP/1.1 404 Not Found", await StatusLineAsync(target));
        }

        using var problem = await Http.GetAsync(platform.FreesideUrl + "/METRICS", Ct);
        Assert.Equal("NOT_FOUND", (await problem.Content.ReadFromJsonAsync<JsonElement>(Ct)).GetProperty("error").GetString());
    }

    [Fact]
    public async Task A_wrong_method_gets_a_405_problem_that_names_the_allowed_one()
    {
        await using var platform = await Platform.StartAsync();
        using var response = await Http.GetAsync(platform.FreesideUrl + "/api/agents/invoke", Ct);
        Assert.Equal(HttpStatusCode.MethodNotAllowed, response.StatusCode);
        Assert.Equal(["POST"], response.Content.Headers.Allow);
        var body = await response.Content.ReadFromJsonAsync<JsonElement>(Ct);
        Assert.Equal("METHOD_NOT_ALLOWED", body.GetProperty("error").GetString());
        Assert.Equal("GET is not allowed on /api/agents/invoke; it takes POST.", body.GetProperty("detail").GetString());
    }

    /// <summary>
    /// The same answer whether the route reads its body itself (invoke) or binds a typed body (an operator route, which
    /// answered <c>HTTP_413</c> "The request could not be served.").
    /// </summary>
    [Fact]
    public async Task A_body_over_the_size_limit_gets_a_413_problem_not_a_400()
    {
        await using var platform = await Platform.StartAsync();
        var uri = new Uri(platform.FreesideUrl);
        var issuer = platform.Freeside.Services.GetRequiredService<Arrakis.Shared.Tokens.TokenIssuer>();
        var routes = new (string Method, string Path, Func<string> Token)[]
        {
            ("POST", "/api/agents/invoke", () => issuer.Mint(FreesideService.Issuer, FreesideService.Issuer,
                new Dictionary<string, object> { ["tenant_id"] = "test-tenant", ["access_level"] = "free" }, TimeSpan.FromMinutes(5))),
            ("PUT", "/api/v1/admin/communities/c1", () => issuer.Mint(FreesideService.Issuer, "arrakis-admin",
                new Dictionary<string, object> { ["role"] = "operator" }, TimeSpan.FromMinutes(5))),
        };
        foreach (var (method, path, token) in routes)
        {
            using var tcp = new System.Net.Sockets.TcpClient();
            await tcp.ConnectAsync(uri.Host, uri.Port, Ct);
            await using var stream = tcp.GetStream();
            // The declared length is over the services' 8 MiB limit (Kestrel's own is 30 MB), so reading the body fails
            // at once; nothing more is sent.
            await stream.WriteAsync(System.Text.Encoding.ASCII.GetBytes(
                $"{method} {path} HTTP/1.1\r\nHost: {uri.Authority}\r\nAuthorization: Bearer {token()}\r\nContent-Type: application/json\r\nContent-Length: 9000000\r\nConnection: close\r\n\r\n{{\"prompt\":\""), Ct);
            using var reader = new StreamReader(stream);
            var head = new List<string>();
            while (await reader.ReadLineAsync(Ct) is { Length: > 0 } line)
            {
                head.Add(line);
            }

            Assert.Equal("HTTP/1.1 413 Payload Too Large", head[0]);
            Assert.Contains(head, h => h.StartsWith("Content-Type: application/problem+json", StringComparison.OrdinalIgnoreCase));
            var body = await reader.ReadToEndAsync(Ct); // chunked: the JSON sits between chunk sizes
            Assert.True(body.Contains("\"error\":\"REQUEST_TOO_LARGE\"", StringComparison.Ordinal), $"{method} {path}: {body}");
            Assert.Contains("\"status\":413", body, StringComparison.Ordinal);
            Assert.Contains("8388608 bytes", body, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Dixie_without_finn_is_unhealthy_but_alive()
    {
        var port = TestStorage.FreePort();
        var settings = TestStorage.FreshConfig("sqlite", "dixie");
        settings["urls"] = $"http://127.0.0.1:{port}";
        settings["Services:FinnUrl"] = $"http://127.0.0.1:{TestStorage.FreePort()}";
        await using var app = await StartAsync(DixieService.CreateAsync, settings);

        // As the reference dixie answers: 200, status unhealthy (dixie is up; it says what it cannot reach). The gate's
        // P0-1 accepts only healthy or degraded, so it still fails on it.
        using var health = await Http.GetAsync($"http://127.0.0.1:{port}/api/health", Ct);
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        var report = await health.Content.ReadFromJsonAsync<JsonElement>(Ct);
        Assert.Equal(("unhealthy", "finn_unreachable"), (report.GetProperty("status").GetString(), report.GetProperty("error").GetString()));
        Assert.Equal("finn_unreachable", report.GetProperty("checks").GetProperty("finn").GetProperty("detail").GetString());

        using var live = await Http.GetAsync($"http://127.0.0.1:{port}/health/live", Ct);
        Assert.Equal(HttpStatusCode.OK, live.StatusCode);
        var body = await live.Content.ReadFromJsonAsync<JsonElement>(Ct);
        Assert.Equal(("alive", "dixie"), (body.GetProperty("status").GetString(), body.GetProperty("service").GetString()));
    }

    [Fact]
    public async Task Health_shows_redis_healthy_with_its_latency()
    {
        if (TestStorage.Redis is null)
        {
            Assert.Skip("Redis not configured (set ARRAKIS_TEST_REDIS)");
        }

        var (app, url) = await StartFreesideAsync(TestStorage.Redis);
        await using var _ = app;

        using var response = await Http.GetAsync(url + "/health", Ct);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var redis = (await response.Content.ReadFromJsonAsync<JsonElement>(Ct)).GetProperty("checks").GetProperty("redis");
        Assert.Equal("healthy", redis.GetProperty("status").GetString());
        Assert.True(redis.GetProperty("data").GetProperty("latency_ms").GetInt64() >= 0);
    }

    [Fact]
    public async Task Health_is_503_within_the_ping_timeout_when_redis_cannot_be_reached()
    {
        var (app, url) = await StartFreesideAsync($"127.0.0.1:{TestStorage.FreePort()}");
        await using var _ = app;

        var sw = Stopwatch.StartNew();
        using var response = await Http.GetAsync(url + "/health", Ct);
        sw.Stop();
        Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
        var body = await response.Content.ReadFromJsonAsync<JsonElement>(Ct);
        Assert.Equal(("unhealthy", "redis_unreachable"), (body.GetProperty("status").GetString(), body.GetProperty("error").GetString()));
        var redis = body.GetProperty("checks").GetProperty("redis");
        Assert.Equal(("unhealthy", "redis_unreachable"), (redis.GetProperty("status").GetString(), redis.GetProperty("detail").GetString()));
        // The 2 s ping timeout, not the multiplexer's 5 s command timeout.
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(4), $"health took {sw.Elapsed}");
    }

    [Fact]
    public async Task Start_up_with_an_unreachable_redis_says_so_once_naming_the_endpoint_but_not_the_password()
    {
        var logs = new RecordingLoggerProvider();
        var port = TestStorage.FreePort();
        var (app, url) = await StartFreesideAsync($"127.0.0.1:{port},password=hunter2-secret", logs);
        await using var _ = app;

        var line = Assert.Single(logs.WithEvent("REDIS_UNREACHABLE"));
        Assert.Equal(Microsoft.Extensions.Logging.LogLevel.Warning, line.Level);
        Assert.Contains($"127.0.0.1:{port}", line.Message, StringComparison.Ordinal);
        Assert.Contains($"within {Caching.RedisConnection.DefaultConnectTimeoutMs} ms", line.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(logs.Entries, e => e.Message.Contains("hunter2", StringComparison.Ordinal));

        // It started anyway, and says why it is unhealthy.
        using var live = await Http.GetAsync(url + "/health/live", Ct);
        Assert.Equal(HttpStatusCode.OK, live.StatusCode);
    }

    [Fact]
    public async Task A_request_that_needs_an_unreachable_redis_gets_a_503_with_retry_after_not_a_500()
    {
        var logs = new RecordingLoggerProvider();
        var (app, url) = await StartFreesideAsync($"127.0.0.1:{TestStorage.FreePort()}", logs);
        await using var _ = app;
        var token = app.Services.GetRequiredService<Arrakis.Shared.Tokens.TokenIssuer>().Mint(FreesideService.Issuer, FreesideService.Issuer,
            new Dictionary<string, object> { ["tenant_id"] = "test-tenant", ["access_level"] = "free" }, TimeSpan.FromMinutes(5));
        using var request = new HttpRequestMessage(HttpMethod.Post, url + "/api/agents/invoke")
        {
            Content = JsonContent.Create(new { prompt = "Say hi", model = "cheap" }),
        };
        request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", token);

        using var response = await Http.SendAsync(request, Ct);

        Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
        Assert.Equal("5", response.Headers.RetryAfter?.ToString());
        var body = await response.Content.ReadFromJsonAsync<JsonElement>(Ct);
        Assert.Equal(("SERVICE_UNAVAILABLE", "redis"), (body.GetProperty("error").GetString(), body.GetProperty("dependency").GetString()));
        var line = Assert.Single(logs.WithEvent("DEPENDENCY_UNAVAILABLE"));
        Assert.Contains("dependency=redis path=/api/agents/invoke", line.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(logs.Entries, e => e.Level == LogLevel.Error);
    }

    [Fact]
    public async Task Losing_redis_and_getting_it_back_is_logged_once_each()
    {
        if (TestStorage.Redis is null)
        {
            Assert.Skip("Redis not configured (set ARRAKIS_TEST_REDIS)");
        }

        var redis = StackExchange.Redis.ConfigurationOptions.Parse(TestStorage.Redis).EndPoints.Single() switch
        {
            DnsEndPoint dns => (dns.Host, dns.Port),
            IPEndPoint ip => (ip.Address.ToString(), ip.Port),
            var other => throw new InvalidOperationException($"unexpected endpoint {other}"),
        };
        await using var proxy = new TcpProxy(redis.Item1, redis.Item2);
        var logs = new RecordingLoggerProvider();
        var (app, url) = await StartFreesideAsync($"127.0.0.1:{proxy.Port}", logs);
        await using var _ = app;
        Assert.Empty(logs.WithEvent("REDIS_UNREACHABLE"));

        proxy.Cut();
        await WaitForAsync(() => logs.WithEvent("REDIS_CONNECTION_LOST").Any());
        using (var down = await Http.GetAsync(url + "/health", Ct))
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, down.StatusCode);
        }

        proxy.Restore();
        await WaitForAsync(() => logs.WithEvent("REDIS_CONNECTION_RESTORED").Any());
        using (var up = await Http.GetAsync(url + "/health", Ct))
        {
            Assert.Equal(HttpStatusCode.OK, up.StatusCode);
        }

        Assert.Single(logs.WithEvent("REDIS_CONNECTION_LOST"));
        Assert.Single(logs.WithEvent("REDIS_CONNECTION_RESTORED"));
    }

    static async Task WaitForAsync(Func<bool> condition)
    {
        var deadline = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(60), "timed out waiting for the log line");
            await Task.Delay(100, Ct);
        }
    }

    static async Task<(WebApplication App, string Url)> StartFreesideAsync(string redis, RecordingLoggerProvider? logs = null)
    {
        var url = $"http://127.0.0.1:{TestStorage.FreePort()}";
        var settings = TestStorage.FreshConfig("sqlite", "freeside");
        settings["urls"] = url;
        settings["Redis:Configuration"] = redis;
        return (await StartAsync(FreesideService.CreateAsync, settings, logs is null ? null : b => b.Logging.AddProvider(logs)), url);
    }

    static async Task<WebApplication> StartAsync(Func<string[], Action<WebApplicationBuilder>?, Task<WebApplication>> create, Dictionary<string, string?> settings,
        Action<WebApplicationBuilder>? configure = null)
    {
        var app = await create(settings.SelectMany(kv => new[] { "--" + kv.Key, kv.Value! }).ToArray(), configure);
        await app.StartAsync(Ct);
        return app;
    }

    sealed class CountingHealth : IHealthContributor
    {
        int _calls;

        public int Calls => _calls;

        public string Name => "counting";

        public Task<HealthCheckResult> CheckAsync(CancellationToken ct)
        {
            Interlocked.Increment(ref _calls);
            return Task.FromResult(new HealthCheckResult(HealthState.Healthy));
        }
    }
}
