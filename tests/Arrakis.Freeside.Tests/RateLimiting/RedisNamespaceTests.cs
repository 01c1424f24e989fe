using System.Net;
using System.Net.Http.Headers;
using System.Text;
using Arrakis.Freeside.Seeding;
using Arrakis.Shared.Caching;
using Arrakis.Shared.Storage;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Freeside.Tests.RateLimiting;

public sealed class RedisNamespaceTests
{
    static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(30) };

    /// <summary>
    /// Two deployments on one Redis (or two test platforms run at once) counted one community's requests in the same
    /// keys, <c>arrakis:ratelimit:…</c>: one used up the other's per-minute limit. Each now counts under its own
    /// <c>Redis:KeyPrefix</c>.
    /// </summary>
    [Fact]
    public async Task Deployments_sharing_one_Redis_keep_their_rate_limits_apart_by_key_prefix()
    {
        if (TestStorage.Redis is null)
        {
            Assert.Skip("Redis not configured (set ARRAKIS_TEST_REDIS)");
        }

        var ct = TestContext.Current.CancellationToken;
        var limits = new Dictionary<string, string?> { ["RateLimits:Free:CommunityPerMinute"] = "2", ["RateLimits:Free:UserPerMinute"] = "100" };
        await using var a = await Platform.StartAsync("postgres", limits);
        await using var b = await Platform.StartAsync("postgres", limits);
        foreach (var p in new[] { a, b })
        {
            await Seeder.For(p.Freeside.Services.GetRequiredService<Database>()).SeedAsync(ct);
        }

        // Fixed one-minute windows: start the calls early in one, so all of them count in the same minute.
        var intoMinute = DateTimeOffset.UtcNow.Second;
        if (intoMinute > 45)
        {
            await Task.Delay(TimeSpan.FromSeconds(61 - intoMinute), ct);
        }

        Assert.Equal(HttpStatusCode.OK, await InvokeAsync(a));
        Assert.Equal(HttpStatusCode.OK, await InvokeAsync(a));
        Assert.Equal(HttpStatusCode.TooManyRequests, await InvokeAsync(a));
        Assert.Equal(HttpStatusCode.OK, await InvokeAsync(b)); // with one shared prefix: 429

        await using var redis = await StackExchange.Redis.ConnectionMultiplexer.ConnectAsync(TestStorage.Redis);
        var server = redis.GetServers().Single();
        var counted = server.Keys(pattern: a.RedisPrefix + "ratelimit:c:" + Seeder.CommunityId + ":*").ToList();
        Assert.Equal(3L, (long)await redis.GetDatabase().StringGetAsync(Assert.Single(counted)));
        Assert.Single(server.Keys(pattern: b.RedisPrefix + "ratelimit:c:" + Seeder.CommunityId + ":*"));
    }

    [Theory]
    [InlineData(null, "arrakis:")]
    [InlineData("arrakis-staging:", "arrakis-staging:")]
    public void The_default_prefix_keeps_the_existing_keys(string? setting, string expected) =>
        Assert.Equal(expected + "ratelimit:x", RedisNamespace.FromConfiguration(setting).Key("ratelimit:x"));

    [Theory]
    [InlineData("")]
    [InlineData("has space:")]
    [InlineData("tab\t")]
    public void A_prefix_that_is_empty_or_has_spaces_is_refused_naming_the_setting(string setting) =>
        Assert.Contains("Redis:KeyPrefix", Assert.Throws<InvalidOperationException>(() => RedisNamespace.FromConfiguration(setting)).Message, StringComparison.Ordinal);

    static async Task<HttpStatusCode> InvokeAsync(Platform p)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, p.FreesideUrl + "/api/agents/invoke")
        {
            Content = new StringContent("""{"prompt":"Say hi","model":"cheap"}""", Encoding.UTF8, "application/json"),
        };
        var token = p.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", "arrakis",
            new Dictionary<string, object> { ["tenant_id"] = Seeder.TenantAlias, ["sub"] = "user-1" }, TimeSpan.FromMinutes(5));
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        using var response = await Http.SendAsync(request, TestContext.Current.CancellationToken);
        return response.StatusCode;
    }
}
