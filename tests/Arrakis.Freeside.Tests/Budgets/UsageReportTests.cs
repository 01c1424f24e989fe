using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Arrakis.Freeside.Seeding;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Freeside.Tests.Budgets;

/// <summary>GET /api/v1/communities/{id}/usage: where the month went, in totals that agree with the budget and in pages.</summary>
public sealed class UsageReportTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static string Token(Platform p, string audience, Dictionary<string, object> claims) =>
        p.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", audience, claims, TimeSpan.FromMinutes(5));

    static string User(Platform p, string tenant = "test-tenant") => Token(p, "arrakis", new()
    {
        ["v"] = 1, ["tenant_id"] = tenant, ["sub"] = "user-1", ["access_level"] = "free", ["pool_id"] = "cheap", ["allowed_pools"] = new[] { "cheap" },
    });

    static async Task<(HttpStatusCode Status, JsonElement Body)> GetAsync(Platform p, HttpClient http, string path, string? token = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, path);
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token ?? User(p));
        using var response = await http.SendAsync(request, Ct);
        return (response.StatusCode, await response.Content.ReadFromJsonAsync<JsonElement>(Ct));
    }

    static async Task<string> InvokeAsync(Platform p, HttpClient http, string body)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/api/agents/invoke") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", User(p));
        using var response = await http.SendAsync(request, Ct);
        var answer = await response.Content.ReadFromJsonAsync<JsonElement>(Ct);
        Assert.True(response.StatusCode == HttpStatusCode.OK, answer.ToString());
        return answer.GetProperty("trace_id").GetString()!;
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task The_report_totals_agree_with_the_budget_and_its_pages_list_every_call_once_newest_first(string engine)
    {
        await using var p = await Platform.StartAsync(engine);
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        string Operator() => Token(p, "arrakis-admin", new() { ["role"] = "operator" });
        await Seeder.SeedOverHttpAsync(http, Operator, Ct);

        var traces = new List<string>();
        for (var i = 0; i < 5; i++)
        {
            traces.Add(await InvokeAsync(p, http, $$"""{"prompt":"Say hello {{i}}","model":"cheap","agent":"nft:{{i % 2}}"}"""));
        }

        // Page through 3 at a time; a call made between two pages neither repeats nor shifts the pages after the first.
        var records = new List<JsonElement>();
        string? cursor = null;
        var pages = 0;
        do
        {
            var (status, page) = await GetAsync(p, http, $"/api/v1/communities/{Seeder.CommunityId}/usage?limit=3" + (cursor is null ? "" : "&cursor=" + cursor));
            Assert.True(status == HttpStatusCode.OK, page.ToString());
            records.AddRange(page.GetProperty("records").EnumerateArray());
            cursor = page.GetProperty("nextCursor").GetString();
            if (pages++ == 0)
            {
                traces.Add(await InvokeAsync(p, http, """{"prompt":"Say hello late","model":"cheap"}"""));
            }
        }
        while (cursor is not null);

        var (_, report) = await GetAsync(p, http, $"/api/v1/communities/{Seeder.CommunityId}/usage");
        var (_, budget) = await GetAsync(p, http, $"/api/v1/communities/{Seeder.CommunityId}/budget");
        var totals = report.GetProperty("totals");
        Assert.Equal(budget.GetProperty("committedMicro").GetInt64(), totals.GetProperty("costMicro").GetInt64()); // C5, as the report shows it
        Assert.Equal(budget.GetProperty("month").GetString(), report.GetProperty("month").GetString());

        // The late call is newer than page 1, so the walk missed it; every other record came exactly once, newest first.
        var all = report.GetProperty("records").EnumerateArray().ToList();
        Assert.Equal(totals.GetProperty("invocations").GetInt64(), all.Count);
        Assert.Equal(all.Count - 1, records.Count);
        Assert.Equal(records.Count, records.Select(r => r.GetProperty("id").GetString()).Distinct().Count());
        Assert.Equal(all.Skip(1).Select(r => r.GetProperty("id").GetString()), records.Select(r => r.GetProperty("id").GetString()));
        Assert.Equal(traces[^1], all[0].GetProperty("traceId").GetString());
        Assert.True(traces.ToHashSet().IsSubsetOf(all.Select(r => r.GetProperty("traceId").GetString()!)),
            $"calls {string.Join(",", traces)}; report {string.Join(",", all.Select(r => r.GetProperty("traceId").GetString()))}");
        var times = all.Select(r => r.GetProperty("createdAt").GetDateTimeOffset()).ToList();
        Assert.Equal(times.OrderByDescending(t => t), times);
        Assert.Equal(totals.GetProperty("costMicro").GetInt64(), all.Sum(r => r.GetProperty("costMicro").GetInt64()));
        Assert.Equal(totals.GetProperty("completionTokens").GetInt64(), all.Sum(r => r.GetProperty("completionTokens").GetInt64()));
        Assert.Equal(totals.GetProperty("costMicro").GetInt64() / 10_000, totals.GetProperty("costCents").GetInt64());

        // Each split sums to the totals; the agent split has the two agents of the calls with their counts.
        foreach (var split in new[] { "byPool", "byModel", "byAgent" })
        {
            var rows = report.GetProperty(split).EnumerateArray().ToList();
            Assert.Equal(totals.GetProperty("invocations").GetInt64(), rows.Sum(r => r.GetProperty("invocations").GetInt64()));
            Assert.Equal(totals.GetProperty("costMicro").GetInt64(), rows.Sum(r => r.GetProperty("costMicro").GetInt64()));
        }

        var agents = report.GetProperty("byAgent").EnumerateArray().Where(r => r.GetProperty("key").ValueKind == JsonValueKind.String)
            .ToDictionary(r => r.GetProperty("key").GetString()!, r => r.GetProperty("invocations").GetInt64());
        Assert.Equal((3L, 2L), (agents["nft:0"], agents["nft:1"]));
        // The six calls and the seed's own spend (posted as one call of the seed agent on 'cheap', model 'seed').
        var pools = report.GetProperty("byPool").EnumerateArray().ToDictionary(r => r.GetProperty("key").GetString()!, r => r.GetProperty("invocations").GetInt64());
        Assert.Equal(new Dictionary<string, long> { ["cheap"] = 7 }, pools);
        Assert.Equal(7, all.Count);

        // Another month: nothing, and no next page.
        var (emptyStatus, empty) = await GetAsync(p, http, $"/api/v1/communities/{Seeder.CommunityId}/usage?month=2020-01");
        Assert.True(emptyStatus == HttpStatusCode.OK, empty.ToString());
        Assert.Equal((0L, 0, JsonValueKind.Null), (empty.GetProperty("totals").GetProperty("costMicro").GetInt64(), empty.GetProperty("records").GetArrayLength(),
            empty.GetProperty("nextCursor").ValueKind));
    }

    [Fact]
    public async Task Bad_parameters_are_refused_with_the_field_named_and_another_community_is_403()
    {
        await using var p = await Platform.StartAsync("sqlite");
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        await Seeder.SeedOverHttpAsync(http, () => Token(p, "arrakis-admin", new() { ["role"] = "operator" }), Ct);
        var path = $"/api/v1/communities/{Seeder.CommunityId}/usage";

        foreach (var (query, field) in new[]
        {
            ("month=2026-13", "month"), ("month=november", "month"), ("month=2026-1", "month"),
            ("limit=0", "limit"), ("limit=501", "limit"), ("limit=ten", "limit"), ("limit=-1", "limit"),
            ("cursor=bm9wZQ", "cursor"), ("cursor=%25%25", "cursor"),
        })
        {
            var (status, problem) = await GetAsync(p, http, path + "?" + query);
            Assert.True(status == HttpStatusCode.BadRequest, $"{query}: {(int)status} {problem}");
            Assert.Equal(("INVALID_REQUEST", field), (problem.GetProperty("error").GetString(), problem.GetProperty("field").GetString()));
        }

        Assert.Equal(HttpStatusCode.OK, (await GetAsync(p, http, path + "?limit=500&month=2026-11")).Status);
        var (other, refused) = await GetAsync(p, http, "/api/v1/communities/someone-else/usage");
        Assert.Equal((HttpStatusCode.Forbidden, "FORBIDDEN"), (other, refused.GetProperty("error").GetString()));
        var (stranger, _) = await GetAsync(p, http, path, User(p, "unknown-tenant"));
        Assert.Equal(HttpStatusCode.Forbidden, stranger);
    }
}
