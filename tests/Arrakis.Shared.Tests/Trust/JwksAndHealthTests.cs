using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Arrakis.Dixie;
using Arrakis.Freeside;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace Arrakis.Shared.Tests.Trust;

public sealed class JwksAndHealthTests
{
    static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(30) };

    [Fact]
    public async Task Jwks_lists_active_first_then_pending_with_public_members_only_and_supports_etag()
    {
        await using var platform = await Platform.StartAsync();
        var keyring = platform.Freeside.Services.GetRequiredService<Keyring>();
        var active = keyring.Current.Active!.Kid;
        var pending = await keyring.RotateAsync(TimeSpan.FromMinutes(5), TestContext.Current.CancellationToken);

        using var response = await Http.GetAsync(platform.FreesideUrl + "/.well-known/jwks.json", TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("public, max-age=30", response.Headers.CacheControl?.ToString());
        var etag = response.Headers.ETag?.ToString();
        Assert.False(string.IsNullOrEmpty(etag));
        var body = await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken);
        var keys = body.GetProperty("keys").EnumerateArray().ToList();
        Assert.Equal([active, pending], keys.Select(k => k.GetProperty("kid").GetString()));
        foreach (var key in keys)
        {
            Assert.Equal(["kty", "crv", "x", "y", "kid", "use", "alg"], key.EnumerateObject().Select(p => p.Name));
            Assert.Equal("ES256", key.GetProperty("alg").GetString());
            Assert.Equal("EC", key.GetProperty("kty").GetString());
        }

        using var conditional = new HttpRequestMessage(HttpMethod.Get, platform.FreesideUrl + "/.well-known/jwks.json");
        conditional.Headers.TryAddWithoutValidation("If-None-Match", etag);
        using var notModified = await Http.SendAsync(conditional, TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.NotModified, notModified.StatusCode);

        using var finnJwks = await Http.GetAsync(platform.FinnUrl + "/.well-known/jwks.json", TestContext.Current.CancellationToken);
        var finnKeys = (await finnJwks.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("keys");
        Assert.Equal(platform.Finn.Services.GetRequiredService<Keyring>().Current.Active!.Kid, finnKeys[0].GetProperty("kid").GetString());
    }

    [Fact]
    public async Task Every_service_answers_health_as_json_and_unknown_routes_as_problem_json()
    {
        await using var platform = await Platform.StartAsync();
        foreach (var url in new[] { platform.FreesideUrl + "/health", platform.DixieUrl + "/api/health", platform.FinnUrl + "/health" })
        {
            using var response = await Http.GetAsync(url, TestContext.Current.CancellationToken);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var body = await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken);
            Assert.Equal("healthy", body.GetProperty("status").GetString());
            Assert.Equal(JsonValueKind.Number, body.GetProperty("uptime_seconds").ValueKind);
            Assert.False(string.IsNullOrEmpty(body.GetProperty("version").GetString()));
            Assert.Equal(JsonValueKind.Object, body.GetProperty("checks").ValueKind);
        }

        using var missing = await Http.GetAsync(platform.FreesideUrl + "/no/such/route", TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        Assert.Equal("NOT_FOUND", (await missing.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("error").GetString());
    }

    [Fact]
    public async Task Dixie_is_unhealthy_when_finn_cannot_be_reached()
    {
        var port = TestStorage.FreePort();
        var closed = TestStorage.FreePort();
        var settings = TestStorage.FreshConfig("sqlite", "dixie");
        settings["urls"] = $"http://127.0.0.1:{port}";
        settings["Services:FinnUrl"] = $"http://127.0.0.1:{closed}";
        var app = await DixieService.CreateAsync(settings.SelectMany(kv => new[] { "--" + kv.Key, kv.Value! }).ToArray());
        await app.StartAsync(TestContext.Current.CancellationToken);
        try
        {
            using var response = await Http.GetAsync($"http://127.0.0.1:{port}/api/health", TestContext.Current.CancellationToken);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode); // dixie is up; finn is upstream (the reference answers 200 too)
            var body = await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken);
            Assert.Equal("unhealthy", body.GetProperty("status").GetString());
            Assert.Equal("finn_unreachable", body.GetProperty("checks").GetProperty("finn").GetProperty("detail").GetString());
        }
        finally
        {
            await app.StopAsync(TestContext.Current.CancellationToken);
            await app.DisposeAsync();
        }
    }

    [Fact]
    public async Task Health_flips_to_503_when_postgres_is_unreachable_and_back_when_it_returns()
    {
        var pg = new NpgsqlConnectionStringBuilder(TestStorage.RequirePostgres());
        await using var proxy = new TcpProxy(pg.Host!, pg.Port);
        pg.Host = "127.0.0.1";
        pg.Port = proxy.Port;
        pg.SearchPath = TestStorage.TrackSchema("t_health_" + Guid.NewGuid().ToString("N")[..12]);
        pg.Timeout = 3;
        var port = TestStorage.FreePort();
        string[] args =
        [
            "--urls", $"http://127.0.0.1:{port}", "--LOA_DATA_DIR", TestStorage.TempDir(),
            "--ConnectionStrings:Freeside", pg.ConnectionString,
        ];
        var app = await FreesideService.CreateAsync(args);
        await app.StartAsync(TestContext.Current.CancellationToken);
        try
        {
            var url = $"http://127.0.0.1:{port}/health";
            Assert.Equal("healthy", await StatusAsync(url, HttpStatusCode.OK));

            proxy.Cut();
            NpgsqlConnection.ClearAllPools();
            Assert.Equal("unhealthy", await StatusAsync(url, HttpStatusCode.ServiceUnavailable));

            // A request that needs the database: 503 with the dependency named and Retry-After, not a 500.
            var token = app.Services.GetRequiredService<Arrakis.Shared.Tokens.TokenIssuer>().Mint(FreesideService.Issuer, FreesideService.Issuer,
                new Dictionary<string, object> { ["tenant_id"] = "test-tenant", ["access_level"] = "free" }, TimeSpan.FromMinutes(5));
            using (var request = new HttpRequestMessage(HttpMethod.Get, $"http://127.0.0.1:{port}/api/v1/communities/test-community-staging-001/budget"))
            {
                request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", token);
                using var refused = await Http.SendAsync(request, TestContext.Current.CancellationToken);
                Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
                Assert.Equal("5", refused.Headers.RetryAfter?.ToString());
                var problem = await refused.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken);
                Assert.Equal(("SERVICE_UNAVAILABLE", "database"), (problem.GetProperty("error").GetString(), problem.GetProperty("dependency").GetString()));
            }

            proxy.Restore();
            var deadline = DateTime.UtcNow.AddSeconds(15);
            string status;
            do
            {
                using var r = await Http.GetAsync(url, TestContext.Current.CancellationToken);
                status = (await r.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("status").GetString()!;
            }
            while (status != "healthy" && DateTime.UtcNow < deadline);
            Assert.Equal("healthy", status);
        }
        finally
        {
            await app.StopAsync(TestContext.Current.CancellationToken);
            await app.DisposeAsync();
        }
    }

    static async Task<string> StatusAsync(string url, HttpStatusCode expected)
    {
        using var response = await Http.GetAsync(url, TestContext.Current.CancellationToken);
        Assert.Equal(expected, response.StatusCode);
        Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        return (await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("status").GetString()!;
    }
}
