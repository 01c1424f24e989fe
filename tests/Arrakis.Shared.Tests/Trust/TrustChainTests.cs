using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Shared.Tests.Trust;

/// <summary>The ES256 chain over real HTTP: freeside → finn → dixie, rotation under load, and emergency revocation.</summary>
public sealed class TrustChainTests
{
    static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(30) };

    static string FreesideToken(Platform p, string audience) =>
        p.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", audience, new Dictionary<string, object> { ["tenant_id"] = "test-tenant" });

    static async Task<HttpResponseMessage> GetAsync(string url, string token)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, url);
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        return await Http.SendAsync(request, TestContext.Current.CancellationToken);
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_freeside_token_is_accepted_by_finn_and_a_finn_token_by_dixie(string engine)
    {
        await using var platform = await Platform.StartAsync(engine);

        using var finn = await GetAsync(platform.FinnUrl + "/api/v1/auth/whoami", FreesideToken(platform, "loa-finn"));
        Assert.Equal(HttpStatusCode.OK, finn.StatusCode);

        var finnToken = platform.Finn.Services.GetRequiredService<TokenIssuer>().Mint("loa-finn", "loa-dixie", new Dictionary<string, object>());
        using var dixie = await GetAsync(platform.DixieUrl + "/api/v1/auth/whoami", finnToken);
        Assert.Equal(HttpStatusCode.OK, dixie.StatusCode);
        var claims = (await dixie.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("claims");
        Assert.Equal("loa-finn", claims.GetProperty("iss").GetString());

        using var direct = await GetAsync(platform.DixieUrl + "/api/v1/auth/whoami", FreesideToken(platform, "loa-dixie"));
        Assert.Equal(HttpStatusCode.OK, direct.StatusCode);
    }

    /// <summary>POSTs freeside's chain route with a user token signed as <c>loa jwt sign</c> does, with freeside's active key.</summary>
    static async Task<HttpResponseMessage> PostChainAsync(Platform platform)
    {
        var pem = platform.Freeside.Services.GetRequiredService<Keyring>().Current.Active!.Private!.ExportPkcs8PrivateKeyPem();
        using var key = Keyring.ParsePem(pem);
        var user = Arrakis.Cli.Commands.JwtCommand.Sign(key, "arrakis", "arrakis", "test-tenant", "free", "cheap", ["cheap"], TimeSpan.FromMinutes(5), null, null, DateTimeOffset.UtcNow);

        using var request = new HttpRequestMessage(HttpMethod.Post, platform.FreesideUrl + "/api/v1/auth/chain");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", user);
        return await Http.SendAsync(request, TestContext.Current.CancellationToken);
    }

    [Fact]
    public async Task The_user_token_travels_the_whole_chain_and_each_hop_verifies_its_own_token()
    {
        await using var platform = await Platform.StartAsync();
        using var response = await PostChainAsync(platform);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var body = await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken);
        Assert.Equal("loa-finn", body.GetProperty("finn").GetProperty("claims").GetProperty("aud").GetString());
        Assert.Equal("loa-finn", body.GetProperty("finn").GetProperty("dixie").GetProperty("claims").GetProperty("iss").GetString());
        Assert.Equal("arrakis", body.GetProperty("dixie").GetProperty("claims").GetProperty("iss").GetString());
    }

    [Fact]
    public async Task A_hop_that_never_answers_breaks_the_chain_with_502_not_500()
    {
        // dixie's address black-holes: connections open, nothing comes back, and freeside's dixie call times out.
        var hole = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        hole.Start();
        try
        {
            await using var platform = await Platform.StartAsync(configure: (service, b) =>
            {
                if (service == "freeside")
                {
                    b.Services.AddHttpClient(Arrakis.Freeside.Identity.IdentitySetup.DixieClient, c =>
                    {
                        c.BaseAddress = new Uri($"http://127.0.0.1:{((IPEndPoint)hole.LocalEndpoint).Port}/");
                        c.Timeout = TimeSpan.FromSeconds(1);
                    });
                }
            });
            using var response = await PostChainAsync(platform);

            // Before, the timeout escaped the route: 500 INTERNAL_ERROR and an error log, for a dependency that did not answer.
            Assert.Equal(HttpStatusCode.BadGateway, response.StatusCode);
            var body = await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken);
            Assert.Equal("CHAIN_BROKEN", body.GetProperty("error").GetString());
            Assert.Contains("dixie answered 0", body.GetProperty("detail").GetString(), StringComparison.Ordinal);
        }
        finally
        {
            hole.Stop();
        }
    }

    [Fact]
    public async Task Finn_rejects_a_user_token_because_its_audience_is_arrakis()
    {
        await using var platform = await Platform.StartAsync();
        using var response = await GetAsync(platform.FinnUrl + "/api/v1/auth/whoami", FreesideToken(platform, "arrakis"));
        Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        var body = await response.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken);
        Assert.Equal("UNAUTHORIZED", body.GetProperty("error").GetString());
    }

    [Fact]
    public async Task Rotating_the_freeside_key_twice_under_load_fails_no_verification()
    {
        await using var platform = await Platform.StartAsync();
        var keyring = platform.Freeside.Services.GetRequiredService<Keyring>();
        var first = keyring.Current.Active!.Kid;
        using var stop = new CancellationTokenSource();
        var failures = 0;
        var successes = 0;
        var kidsSeen = new HashSet<string>();

        async Task LoadAsync()
        {
            while (!stop.IsCancellationRequested)
            {
                var token = FreesideToken(platform, "loa-finn");
                lock (kidsSeen)
                {
                    kidsSeen.Add(new Microsoft.IdentityModel.JsonWebTokens.JsonWebToken(token).Kid);
                }

                using var r = await GetAsync(platform.FinnUrl + "/api/v1/auth/whoami", token);
                if (r.StatusCode == HttpStatusCode.OK)
                {
                    Interlocked.Increment(ref successes);
                }
                else
                {
                    Interlocked.Increment(ref failures);
                }
            }
        }

        var load = Task.WhenAll(Enumerable.Range(0, 4).Select(_ => Task.Run(LoadAsync)));
        var second = await keyring.RotateAsync(TimeSpan.FromSeconds(3), TestContext.Current.CancellationToken);
        await WaitForActiveAsync(keyring, second);
        var third = await keyring.RotateAsync(TimeSpan.FromSeconds(3), TestContext.Current.CancellationToken);
        await WaitForActiveAsync(keyring, third);
        await Task.Delay(1000, TestContext.Current.CancellationToken);
        await stop.CancelAsync();
        await load;

        Assert.Equal(0, failures);
        Assert.True(successes > 20, $"only {successes} verifications ran");
        Assert.Contains(first, kidsSeen);
        Assert.Contains(second, kidsSeen);
        Assert.Contains(third, kidsSeen);
    }

    [Fact]
    public async Task An_operator_token_signed_before_a_rotation_verifies_for_its_whole_lifetime()
    {
        var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var platform = await Platform.StartAsync(configure: (service, b) =>
        {
            if (service == "freeside")
            {
                b.Services.AddSingleton<TimeProvider>(time);
            }
        });
        var keyring = platform.Freeside.Services.GetRequiredService<Keyring>();
        var issuer = platform.Freeside.Services.GetRequiredService<TokenIssuer>();
        // Operator tokens may live an hour (CommunitiesSetup.MaxOperatorTokenLifetime); user tokens 15 minutes.
        string Operator() => issuer.Mint("arrakis", "arrakis-admin", new Dictionary<string, object> { ["role"] = "operator" },
            Arrakis.Freeside.Communities.CommunitiesSetup.MaxOperatorTokenLifetime);
        var before = Operator();
        var later = Operator();
        var url = platform.FreesideUrl + "/api/v1/admin/communities/test-community-staging-001";
        using (var first = await GetAsync(url, before))
        {
            Assert.NotEqual(HttpStatusCode.Unauthorized, first.StatusCode);
        }

        await keyring.RotateAsync(TimeSpan.Zero, TestContext.Current.CancellationToken);
        time.Advance(TimeSpan.FromMinutes(40));
        await keyring.ReloadAsync(TestContext.Current.CancellationToken);

        // Retired keys were published only for the user tokens' 15 minutes: the operator token, 20 minutes from its
        // expiry, was refused "bad signature" once its key left the keyring.
        using var response = await GetAsync(url, later);
        Assert.NotEqual(HttpStatusCode.Unauthorized, response.StatusCode);

        time.Advance(TimeSpan.FromMinutes(21));
        await keyring.ReloadAsync(TestContext.Current.CancellationToken);
        Assert.Equal([keyring.Current.Active!.Kid], keyring.Current.Published.Select(k => k.Kid));
    }

    static async Task WaitForActiveAsync(Keyring keyring, string kid)
    {
        var sw = Stopwatch.StartNew();
        while (keyring.Current.Active?.Kid != kid)
        {
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(15), $"key {kid} was not promoted");
            await Task.Delay(200, TestContext.Current.CancellationToken);
        }
    }

    [Fact]
    public async Task After_revocation_finn_and_dixie_reject_the_revoked_key_within_60_seconds()
    {
        await using var platform = await Platform.StartAsync();
        var keyring = platform.Freeside.Services.GetRequiredService<Keyring>();
        var revoked = keyring.Current.Active!;

        string Signed(string audience) => TokenIssuer.Mint(revoked, "arrakis", audience, new Dictionary<string, object>(), TimeSpan.FromSeconds(120), DateTimeOffset.UtcNow);

        // Both verifiers have the key cached before the revocation.
        using (var warmFinn = await GetAsync(platform.FinnUrl + "/api/v1/auth/whoami", Signed("loa-finn")))
        using (var warmDixie = await GetAsync(platform.DixieUrl + "/api/v1/auth/whoami", Signed("loa-dixie")))
        {
            Assert.Equal(HttpStatusCode.OK, warmFinn.StatusCode);
            Assert.Equal(HttpStatusCode.OK, warmDixie.StatusCode);
        }

        await keyring.RevokeAsync(revoked.Kid, TestContext.Current.CancellationToken);
        var sw = Stopwatch.StartNew();
        TimeSpan? finnAt = null, dixieAt = null;
        while ((finnAt is null || dixieAt is null) && sw.Elapsed < TimeSpan.FromSeconds(65))
        {
            if (finnAt is null)
            {
                using var f = await GetAsync(platform.FinnUrl + "/api/v1/auth/whoami", Signed("loa-finn"));
                finnAt = f.StatusCode == HttpStatusCode.Unauthorized ? sw.Elapsed : null;
            }

            if (dixieAt is null)
            {
                using var d = await GetAsync(platform.DixieUrl + "/api/v1/auth/whoami", Signed("loa-dixie"));
                dixieAt = d.StatusCode == HttpStatusCode.Unauthorized ? sw.Elapsed : null;
            }

            await Task.Delay(500, TestContext.Current.CancellationToken);
        }

        TestContext.Current.SendDiagnosticMessage($"revocation effective: finn {finnAt?.TotalSeconds:0.0} s, dixie {dixieAt?.TotalSeconds:0.0} s");
        Assert.NotNull(finnAt);
        Assert.NotNull(dixieAt);
        Assert.True(finnAt < TimeSpan.FromSeconds(60) && dixieAt < TimeSpan.FromSeconds(60), $"finn {finnAt}, dixie {dixieAt}");

        // The new active key still works everywhere.
        using var fresh = await GetAsync(platform.FinnUrl + "/api/v1/auth/whoami", FreesideToken(platform, "loa-finn"));
        Assert.Equal(HttpStatusCode.OK, fresh.StatusCode);
    }
}
