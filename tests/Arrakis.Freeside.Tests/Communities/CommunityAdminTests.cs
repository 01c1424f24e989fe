using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json;
using Arrakis.Freeside.Audit;
using Arrakis.Freeside.Budgets;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Freeside.Tests.Communities;

/// <summary>The operator routes that move money or change what a community may do (grants, recorded spend, upserts).</summary>
public sealed class CommunityAdminTests
{
    public static TheoryData<string> Engines => TestStorage.Engines();

    static string Operator(Platform p) =>
        p.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", "arrakis-admin", new Dictionary<string, object> { ["role"] = "operator" }, TimeSpan.FromMinutes(5));

    static async Task<(HttpStatusCode Status, JsonElement Body)> SendAsync(Platform p, HttpClient http, HttpMethod method, string path, object body)
    {
        using var request = new HttpRequestMessage(method, path) { Content = JsonContent.Create(body) };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", Operator(p));
        using var response = await http.SendAsync(request, TestContext.Current.CancellationToken);
        var text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        return (response.StatusCode, text.Length == 0 ? default : JsonDocument.Parse(text).RootElement.Clone());
    }

    static async Task<BudgetView> BudgetAsync(Platform p, string community) =>
        (await p.Freeside.Services.GetRequiredService<BudgetStore>().GetAsync(community, TestContext.Current.CancellationToken))!;

    static async Task AssertConservedAsync(Platform p)
    {
        var report = await p.Freeside.Services.GetRequiredService<ConservationAudit>().RunAsync(TestContext.Current.CancellationToken);
        Assert.True(report.Passed, string.Join("\n", report.Communities.SelectMany(c => c.Checks.Where(x => !x.Passed).Select(x => $"{c.CommunityId} {x.Invariant}: {string.Join("; ", x.Violations)}"))));
    }

    static void AssertProblem((HttpStatusCode Status, JsonElement Body) answer, HttpStatusCode status, string error)
    {
        Assert.True(answer.Status == status, $"{answer.Status} {answer.Body}");
        Assert.Equal(error, answer.Body.GetProperty("error").GetString());
        Assert.False(string.IsNullOrWhiteSpace(answer.Body.GetProperty("detail").GetString()));
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Recorded_spend_never_finalizes_a_reservation_of_another_community_or_another_amount(string engine)
    {
        await using var p = await Platform.StartAsync(engine);
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        foreach (var id in new[] { "payer", "bystander" })
        {
            Assert.Equal(HttpStatusCode.OK, (await SendAsync(p, http, HttpMethod.Put, $"/api/v1/admin/communities/{id}", new { name = id, tier = "pro", monthlyBudgetCents = 1_000 })).Status);
            Assert.Equal(HttpStatusCode.Created, (await SendAsync(p, http, HttpMethod.Post, $"/api/v1/admin/communities/{id}/credits", new { lotId = id + "-lot", amountMicro = 5_000_000 })).Status);
        }

        // A call of the bystander's is in flight: its reservation is pending.
        var ledger = p.Freeside.Services.GetRequiredService<Freeside.Ledger.Ledger>();
        Assert.Equal(Freeside.Ledger.ReserveStatus.Reserved, (await ledger.ReserveAsync("bystander", "inflight", 300_000, ct: TestContext.Current.CancellationToken)).Status);

        // Recording a spend for the payer with that id must not finalize (charge) the bystander's reservation.
        AssertProblem(await SendAsync(p, http, HttpMethod.Post, "/api/v1/admin/communities/payer/spend", new { reservationId = "inflight", amountMicro = 200_000 }),
            HttpStatusCode.Conflict, "RESERVATION_EXISTS");
        Assert.Equal("pending", (await ledger.FindReservationAsync("inflight", TestContext.Current.CancellationToken))!.Status);
        Assert.Equal((0L, 300_000L), ((await BudgetAsync(p, "bystander")).CommittedMicro, (await BudgetAsync(p, "bystander")).ReservedMicro));
        Assert.Equal(0, (await BudgetAsync(p, "payer")).CommittedMicro);

        // A retry of a recorded spend is idempotent; the same id with another amount is a conflict, not a silent 200.
        var first = await SendAsync(p, http, HttpMethod.Post, "/api/v1/admin/communities/payer/spend", new { reservationId = "s1", amountMicro = 100_000 });
        Assert.Equal(HttpStatusCode.OK, first.Status);
        var retry = await SendAsync(p, http, HttpMethod.Post, "/api/v1/admin/communities/payer/spend", new { reservationId = "s1", amountMicro = 100_000 });
        Assert.Equal(HttpStatusCode.OK, retry.Status);
        Assert.Equal(100_000, retry.Body.GetProperty("actualMicro").GetInt64());
        AssertProblem(await SendAsync(p, http, HttpMethod.Post, "/api/v1/admin/communities/payer/spend", new { reservationId = "s1", amountMicro = 90_000 }),
            HttpStatusCode.Conflict, "RESERVATION_EXISTS");
        AssertProblem(await SendAsync(p, http, HttpMethod.Post, "/api/v1/admin/communities/bystander/spend", new { reservationId = "s1", amountMicro = 100_000 }),
            HttpStatusCode.Conflict, "RESERVATION_EXISTS");

        Assert.Equal(100_000, (await BudgetAsync(p, "payer")).CommittedMicro);
        Assert.Equal(0, (await BudgetAsync(p, "bystander")).CommittedMicro);
        Assert.Equal(Freeside.Ledger.FinalizeStatus.Finalized, (await ledger.FinalizeAsync("inflight", 250_000, new Freeside.Ledger.UsageRecord(), TestContext.Current.CancellationToken)).Status);
        await AssertConservedAsync(p);
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Updating_a_community_without_a_tier_keeps_its_tier(string engine)
    {
        await using var p = await Platform.StartAsync(engine);
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        var created = await SendAsync(p, http, HttpMethod.Put, "/api/v1/admin/communities/big", new { name = "Big", tier = "enterprise", monthlyBudgetCents = 1_000 });
        Assert.Equal("enterprise", created.Body.GetProperty("tier").GetString());

        var renamed = await SendAsync(p, http, HttpMethod.Put, "/api/v1/admin/communities/big", new { name = "Big Co", monthlyBudgetCents = 2_000 });
        Assert.Equal(HttpStatusCode.OK, renamed.Status);
        Assert.Equal(("Big Co", "enterprise", 2_000L), (renamed.Body.GetProperty("name").GetString(), renamed.Body.GetProperty("tier").GetString(), renamed.Body.GetProperty("monthlyBudgetCents").GetInt64()));

        var fresh = await SendAsync(p, http, HttpMethod.Put, "/api/v1/admin/communities/small", new { name = "Small", monthlyBudgetCents = 10 });
        Assert.Equal("free", fresh.Body.GetProperty("tier").GetString()); // a new community without a tier is free
        AssertProblem(await SendAsync(p, http, HttpMethod.Put, "/api/v1/admin/communities/big", new { name = "Big", tier = "platinum", monthlyBudgetCents = 10 }),
            HttpStatusCode.BadRequest, "INVALID_REQUEST");
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task A_grant_that_has_already_expired_or_names_two_amounts_is_refused(string engine)
    {
        await using var p = await Platform.StartAsync(engine);
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        Assert.Equal(HttpStatusCode.OK, (await SendAsync(p, http, HttpMethod.Put, "/api/v1/admin/communities/c1", new { name = "C", monthlyBudgetCents = 1_000 })).Status);
        var now = p.Freeside.Services.GetRequiredService<TimeProvider>().GetUtcNow();

        var expired = await SendAsync(p, http, HttpMethod.Post, "/api/v1/admin/communities/c1/credits", new { lotId = "old", amountMicro = 5_000_000, expiresAt = now.AddDays(-1) });
        AssertProblem(expired, HttpStatusCode.BadRequest, "INVALID_REQUEST");
        Assert.Equal("expiresAt", expired.Body.GetProperty("field").GetString());
        var both = await SendAsync(p, http, HttpMethod.Post, "/api/v1/admin/communities/c1/credits", new { lotId = "two", amountMicro = 5_000_000, amountCents = 5 });
        AssertProblem(both, HttpStatusCode.BadRequest, "INVALID_REQUEST");
        Assert.Equal(0, (await BudgetAsync(p, "c1")).CreditBalanceMicro);

        Assert.Equal(HttpStatusCode.Created, (await SendAsync(p, http, HttpMethod.Post, "/api/v1/admin/communities/c1/credits", new { lotId = "new", amountMicro = 5_000_000, expiresAt = now.AddDays(30) })).Status);
        Assert.Equal(5_000_000, (await BudgetAsync(p, "c1")).CreditBalanceMicro);
        await AssertConservedAsync(p);
    }

    /// <summary>
    /// Each refusal names the field at fault in <c>field</c>, as its message does. A bad lot id, amount or source of a
    /// grant was <c>field: "body"</c>; a bad community id in a spend's path <c>field: "amount"</c> (now <c>id</c>, as the
    /// other <c>/communities/{id}</c> routes name it); a bad tenant, agent or community id of an alias or agent, and any
    /// missing required field, <c>field: "body"</c>. Nothing is granted, spent, aliased or stored.
    /// </summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Refused_operator_requests_name_the_field_at_fault_and_change_nothing(string engine)
    {
        await using var p = await Platform.StartAsync(engine);
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        Assert.Equal(HttpStatusCode.OK, (await SendAsync(p, http, HttpMethod.Put, "/api/v1/admin/communities/c1", new { name = "C", monthlyBudgetCents = 1_000 })).Status);
        const string Contract = "0x0000000000000000000000000000000000000001";
        var cases = new (HttpMethod Method, string Path, object Body, string Field)[]
        {
            (HttpMethod.Post, "/api/v1/admin/communities/c1/credits", new { lotId = "../x", amountMicro = 5 }, "lotId"),
            (HttpMethod.Post, "/api/v1/admin/communities/c1/credits", new { lotId = "l1", amountMicro = -5 }, "amountMicro"),
            (HttpMethod.Post, "/api/v1/admin/communities/c1/credits", new { lotId = "l1", amountMicro = 5, source = "gift" }, "source"),
            (HttpMethod.Post, "/api/v1/admin/communities/a%20b/credits", new { lotId = "l1", amountMicro = 5 }, "id"),
            (HttpMethod.Post, "/api/v1/admin/communities/c1/spend", new { reservationId = "s1", amountMicro = 0 }, "amountMicro"),
            (HttpMethod.Post, "/api/v1/admin/communities/a%20b/spend", new { reservationId = "s1", amountMicro = 5 }, "id"),
            (HttpMethod.Put, "/api/v1/admin/tenant-aliases/a%20b", new { communityId = "c1" }, "tenantId"),
            (HttpMethod.Put, "/api/v1/admin/tenant-aliases/t1", new { communityId = "a b" }, "communityId"),
            (HttpMethod.Put, "/api/v1/admin/agents/a%20b", new { communityId = "c1", nftContract = Contract, nftTokenId = "1" }, "id"),
            (HttpMethod.Put, "/api/v1/admin/agents/a1", new { communityId = "a b", nftContract = Contract, nftTokenId = "1" }, "communityId"),
            // A missing field is named too (each was field "body").
            (HttpMethod.Put, "/api/v1/admin/communities/c2", new { monthlyBudgetCents = 1 }, "name"),
            (HttpMethod.Put, "/api/v1/admin/communities/c2", new { name = "C2" }, "monthlyBudgetCents"),
            (HttpMethod.Post, "/api/v1/admin/communities/c1/credits", new { amountMicro = 5 }, "lotId"),
            (HttpMethod.Post, "/api/v1/admin/communities/c1/credits", new { lotId = "l1" }, "amountMicro"),
            (HttpMethod.Post, "/api/v1/admin/communities/c1/spend", new { amountMicro = 5 }, "reservationId"),
            (HttpMethod.Post, "/api/v1/admin/communities/c1/spend", new { reservationId = "s1" }, "amountMicro"),
            (HttpMethod.Put, "/api/v1/admin/agents/a1", new { nftContract = Contract, nftTokenId = "1" }, "communityId"),
            (HttpMethod.Put, "/api/v1/admin/agents/a1", new { communityId = "c1", nftTokenId = "1" }, "nftContract"),
            (HttpMethod.Put, "/api/v1/admin/agents/a1", new { communityId = "c1", nftContract = Contract }, "nftTokenId"),
        };
        var wrong = new List<string>();
        foreach (var (method, path, body, field) in cases)
        {
            var (status, answer) = await SendAsync(p, http, method, path, body);
            if (ProblemBodies.Mismatch(status, answer.ValueKind == JsonValueKind.Undefined ? "" : answer.GetRawText(), field) is { } miss)
            {
                wrong.Add($"{method} {path} {miss}");
            }
        }

        Assert.True(wrong.Count == 0, string.Join("; ", wrong));
        var budget = await BudgetAsync(p, "c1");
        Assert.Equal((0L, 0L, 0L), (budget.CreditBalanceMicro, budget.CommittedMicro, budget.ReservedMicro));
        var communities = p.Freeside.Services.GetRequiredService<Freeside.Communities.CommunityStore>();
        Assert.Null(await communities.ResolveTenantAsync("t1", TestContext.Current.CancellationToken));
        Assert.Null(await communities.FindAgentAsync("a1", TestContext.Current.CancellationToken));
        Assert.Null(await communities.FindAsync("c2", TestContext.Current.CancellationToken));
        await AssertConservedAsync(p);
    }

    /// <summary>
    /// A body that names a field twice (or twice in different case: names match case-insensitively) is ambiguous; the
    /// invoke and quality routes refuse it, while the operator routes took the last value: a grant of
    /// <c>{"amountMicro":1,"amountMicro":7000000}</c> credited 7,000,000. Now 400 naming the field, and nothing changes.
    /// </summary>
    [Theory]
    [MemberData(nameof(Engines))]
    public async Task A_body_that_names_a_field_twice_is_refused_naming_it_and_changes_nothing(string engine)
    {
        await using var p = await Platform.StartAsync(engine);
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        Assert.Equal(HttpStatusCode.OK, (await SendAsync(p, http, HttpMethod.Put, "/api/v1/admin/communities/c1", new { name = "C", monthlyBudgetCents = 1_000 })).Status);
        var cases = new (HttpMethod Method, string Path, string Body, string Field)[]
        {
            (HttpMethod.Post, "/api/v1/admin/communities/c1/credits", """{"lotId":"l1","amountMicro":1,"amountMicro":7000000}""", "amountMicro"),
            (HttpMethod.Post, "/api/v1/admin/communities/c1/credits", """{"lotId":"l1","amountMicro":1,"AmountMicro":7000000}""", "AmountMicro"),
            (HttpMethod.Post, "/api/v1/admin/communities/c1/spend", """{"reservationId":"s1","amountMicro":1,"amountMicro":900000}""", "amountMicro"),
            (HttpMethod.Put, "/api/v1/admin/communities/c1", """{"name":"C","monthlyBudgetCents":1000,"monthlyBudgetCents":1}""", "monthlyBudgetCents"),
            (HttpMethod.Put, "/api/v1/admin/communities/c1/budget", """{"monthlyBudgetCents":1000,"monthlyBudgetCents":1}""", "monthlyBudgetCents"),
            (HttpMethod.Put, "/api/v1/admin/tenant-aliases/t1", """{"communityId":"c1","communityId":"c1"}""", "communityId"),
        };
        var wrong = new List<string>();
        foreach (var (method, path, body, field) in cases)
        {
            using var request = new HttpRequestMessage(method, path) { Content = new StringContent(body, System.Text.Encoding.UTF8, "application/json") };
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", Operator(p));
            using var response = await http.SendAsync(request, TestContext.Current.CancellationToken);
            if (ProblemBodies.Mismatch(response.StatusCode, await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken), field) is { } miss)
            {
                wrong.Add($"{method} {path} {miss}");
            }
        }

        Assert.True(wrong.Count == 0, string.Join("; ", wrong));
        var budget = await BudgetAsync(p, "c1");
        Assert.Equal((0L, 0L, 0L, 1_000L), (budget.CreditBalanceMicro, budget.CommittedMicro, budget.ReservedMicro, budget.MonthlyBudgetCents));
        Assert.Null(await p.Freeside.Services.GetRequiredService<Freeside.Communities.CommunityStore>().ResolveTenantAsync("t1", TestContext.Current.CancellationToken));
        await AssertConservedAsync(p);
    }
}
