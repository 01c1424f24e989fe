using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json;
using Arrakis.Freeside.Seeding;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Freeside.Tests.Budgets;

public sealed class BudgetApiTests
{
    public static TheoryData<string> Engines => TestStorage.Engines();

    static string Token(Platform p, string audience, Dictionary<string, object> claims) =>
        p.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", audience, claims, TimeSpan.FromMinutes(5));

    static string User(Platform p, string tenant) => Token(p, "arrakis", new() { ["tenant_id"] = tenant, ["sub"] = "user-1" });

    static string Operator(Platform p, string role = "operator") => Token(p, "arrakis-admin", new() { ["role"] = role });

    static async Task<(HttpStatusCode Status, JsonElement Body)> SendAsync(HttpClient http, HttpMethod method, string path, string token, object? body = null)
    {
        using var request = new HttpRequestMessage(method, path);
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        if (body is not null)
        {
            request.Content = JsonContent.Create(body);
        }

        using var response = await http.SendAsync(request, TestContext.Current.CancellationToken);
        var text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        return (response.StatusCode, text.Length == 0 ? default : JsonDocument.Parse(text).RootElement.Clone());
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Seeding_over_http_records_the_spend_under_the_next_id_when_an_earlier_seed_never_finalized(string engine)
    {
        // A seed whose spend call reserved and then died (freeside killed mid-request) leaves a hold that expires; the spend
        // route then answers 409 RESERVATION_EXPIRED for that id on every later seed, which used to fail for good.
        await using var p = await Platform.StartAsync(engine);
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        var ledger = p.Freeside.Services.GetRequiredService<Arrakis.Freeside.Ledger.Ledger>();
        Assert.Equal(HttpStatusCode.OK, (await SendAsync(http, HttpMethod.Put, $"/api/v1/admin/communities/{Seeder.CommunityId}", Operator(p),
            new { name = Seeder.CommunityName, tier = "free", monthlyBudgetCents = Seeder.BudgetCents })).Status);
        Assert.True((await ledger.GrantAsync(Seeder.CommunityId, Seeder.CreditLotId, Seeder.LotCents * 10_000, "seed", ct: TestContext.Current.CancellationToken)).Status
            is Arrakis.Freeside.Ledger.GrantStatus.Granted);
        Assert.True((await ledger.ReserveAsync(Seeder.CommunityId, Seeder.SpendReservationId, 20_000_000, ct: TestContext.Current.CancellationToken)).Admitted);
        await ledger.ReleaseAsync(Seeder.SpendReservationId, TestContext.Current.CancellationToken);
        var stuck = await SendAsync(http, HttpMethod.Post, $"/api/v1/admin/communities/{Seeder.CommunityId}/spend", Operator(p),
            new { reservationId = Seeder.SpendReservationId, amountMicro = 20_000_000 });
        Assert.Equal((HttpStatusCode.Conflict, "RESERVATION_ALREADYRELEASED"), (stuck.Status, stuck.Body.GetProperty("error").GetString()));

        Assert.Equal(Seeder.OutputLines, await Seeder.SeedOverHttpAsync(http, () => Operator(p), TestContext.Current.CancellationToken));
        await Seeder.SeedOverHttpAsync(http, () => Operator(p), TestContext.Current.CancellationToken); // still re-runnable

        var (status, body) = await SendAsync(http, HttpMethod.Get, $"/api/v1/communities/{Seeder.CommunityId}/budget", User(p, "test-tenant"));
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(2_000, body.GetProperty("committed").GetInt64());
        Assert.Equal(30_000_000, body.GetProperty("creditBalanceMicro").GetInt64());
        Assert.Equal("posted", (await ledger.FindReservationAsync(Seeder.SpendAttemptIds[1], TestContext.Current.CancellationToken))!.Status);
        Assert.True((await SendAsync(http, HttpMethod.Get, "/api/v1/admin/conservation", Operator(p))).Body.GetProperty("passed").GetBoolean());
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Seeded_budget_endpoint_returns_exact_integer_fields_and_403_for_another_community(string engine)
    {
        await using var p = await Platform.StartAsync(engine);
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        Assert.Equal(Seeder.OutputLines, await Seeder.SeedOverHttpAsync(http, () => Operator(p), TestContext.Current.CancellationToken));
        await Seeder.SeedOverHttpAsync(http, () => Operator(p), TestContext.Current.CancellationToken); // re-runnable

        var (status, body) = await SendAsync(http, HttpMethod.Get, $"/api/v1/communities/{Seeder.CommunityId}/budget", User(p, "test-tenant"));
        Assert.Equal(HttpStatusCode.OK, status);
        string[] fields = ["communityId", "monthlyBudgetCents", "committed", "spentCents", "reserved", "available", "percentUsed", "committedMicro", "reservedMicro", "availableMicro", "creditBalanceMicro", "month"];
        Assert.Equal(fields.Order(), body.EnumerateObject().Select(x => x.Name).Order());
        foreach (var field in fields.Where(f => f is not ("communityId" or "month")))
        {
            Assert.Equal(JsonValueKind.Number, body.GetProperty(field).ValueKind);
            Assert.True(body.GetProperty(field).TryGetInt64(out _), field + " must be an integer");
            Assert.DoesNotContain('.', body.GetProperty(field).GetRawText());
        }

        Assert.Equal(10_000, body.GetProperty("monthlyBudgetCents").GetInt64());
        Assert.Equal(2_000, body.GetProperty("committed").GetInt64());
        Assert.Equal(2_000, body.GetProperty("spentCents").GetInt64());
        Assert.Equal(8_000, body.GetProperty("available").GetInt64());
        Assert.Equal(20, body.GetProperty("percentUsed").GetInt64());
        Assert.Equal(30_000_000, body.GetProperty("creditBalanceMicro").GetInt64());

        var other = await SendAsync(http, HttpMethod.Put, "/api/v1/admin/communities/other-community", Operator(p), new { name = "Other", tier = "pro", monthlyBudgetCents = 5 });
        Assert.Equal(HttpStatusCode.OK, other.Status);
        var forbidden = await SendAsync(http, HttpMethod.Get, "/api/v1/communities/other-community/budget", User(p, "test-tenant"));
        Assert.Equal(HttpStatusCode.Forbidden, forbidden.Status);
        Assert.Equal("FORBIDDEN", forbidden.Body.GetProperty("error").GetString());
        Assert.Equal(HttpStatusCode.Unauthorized, (await SendAsync(http, HttpMethod.Get, $"/api/v1/communities/{Seeder.CommunityId}/budget", "garbage")).Status);

        var conservation = await SendAsync(http, HttpMethod.Get, "/api/v1/admin/conservation", Operator(p));
        Assert.Equal(HttpStatusCode.OK, conservation.Status);
        Assert.True(conservation.Body.GetProperty("passed").GetBoolean());
    }

    // `loa jwt sign --ttl` and the key-rotation runbook say user tokens may live up to Keyring:MaxTokenLifetime (the time a
    // retired key stays published); the user policy had 15 minutes built in, so the setting was ignored both ways.
    [Theory]
    [InlineData(null, 14, HttpStatusCode.OK)]
    [InlineData(null, 20, HttpStatusCode.Unauthorized)]
    [InlineData("00:30:00", 20, HttpStatusCode.OK)]
    [InlineData("00:05:00", 10, HttpStatusCode.Unauthorized)]
    public async Task User_tokens_may_live_as_long_as_Keyring_MaxTokenLifetime(string? maxLifetime, int minutes, HttpStatusCode expected)
    {
        var settings = maxLifetime is null ? null : new Dictionary<string, string?> { ["Keyring:MaxTokenLifetime"] = maxLifetime };
        await using var p = await Platform.StartAsync(settings: settings);
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        var token = p.Freeside.Services.GetRequiredService<TokenIssuer>()
            .Mint("arrakis", "arrakis", new Dictionary<string, object> { ["tenant_id"] = "t", ["sub"] = "u" }, TimeSpan.FromMinutes(minutes));

        Assert.Equal(expected, (await SendAsync(http, HttpMethod.Get, "/api/v1/auth/whoami", token)).Status);
    }

    [Fact]
    public async Task Admin_routes_need_an_operator_and_refuse_bad_input_without_changing_anything()
    {
        await using var p = await Platform.StartAsync();
        using var http = new HttpClient { BaseAddress = new Uri(p.FreesideUrl) };
        Assert.Equal(HttpStatusCode.Forbidden, (await SendAsync(http, HttpMethod.Put, "/api/v1/admin/communities/c1", Operator(p, "viewer"), new { name = "C", monthlyBudgetCents = 1 })).Status);
        Assert.Equal(HttpStatusCode.Unauthorized, (await SendAsync(http, HttpMethod.Put, "/api/v1/admin/communities/c1", User(p, "t"), new { name = "C", monthlyBudgetCents = 1 })).Status);
        // The token and the role are checked before the body binds: a caller without them learns nothing about the body.
        Assert.Equal(HttpStatusCode.Unauthorized, (await SendAsync(http, HttpMethod.Put, "/api/v1/admin/communities/c1/budget", "garbage", new { monthlyBudgetCents = "x" })).Status);
        Assert.Equal(HttpStatusCode.Forbidden, (await SendAsync(http, HttpMethod.Put, "/api/v1/admin/communities/c1/budget", Operator(p, "viewer"), new { monthlyBudgetCents = "x" })).Status);
        var upserted = await SendAsync(http, HttpMethod.Put, "/api/v1/admin/communities/c1", Operator(p), new { name = "C", monthlyBudgetCents = 100 });
        Assert.Equal(HttpStatusCode.OK, upserted.Status);
        Assert.Equal("free", upserted.Body.GetProperty("tier").GetString()); // by name, as tokens spell it, not an ordinal

        var bad = new (string Path, object Body, HttpStatusCode Status, string Error)[]
        {
            ("/api/v1/admin/communities/c1/budget", new { monthlyBudgetCents = -1 }, HttpStatusCode.BadRequest, "INVALID_REQUEST"),
            ("/api/v1/admin/communities/bad%20id!", new { name = "x", monthlyBudgetCents = 1 }, HttpStatusCode.BadRequest, "INVALID_REQUEST"),
            ("/api/v1/admin/communities/nope/budget", new { monthlyBudgetCents = 1 }, HttpStatusCode.NotFound, "NOT_FOUND"),
            ("/api/v1/admin/tenant-aliases/c1", new { communityId = "c1" }, HttpStatusCode.Conflict, "ALIAS_CYCLE"),
            ("/api/v1/admin/tenant-aliases/" + new string('k', 256), new { communityId = "c1" }, HttpStatusCode.BadRequest, "INVALID_REQUEST"),
            ("/api/v1/admin/communities/c1/budget", new { monthlyBudgetCents = "100" }, HttpStatusCode.BadRequest, "INVALID_REQUEST"),
            ("/api/v1/admin/communities/c1/budget", new { monthlyBudgetCents = 1.5 }, HttpStatusCode.BadRequest, "INVALID_REQUEST"),
        };
        foreach (var (path, body, status, error) in bad)
        {
            var result = await SendAsync(http, HttpMethod.Put, path, Operator(p), body);
            Assert.True(status == result.Status, $"{path}: {result.Status} {result.Body}");
            Assert.Equal(error, result.Body.GetProperty("error").GetString());
            if (body.ToString()!.Contains("monthlyBudgetCents = ", StringComparison.Ordinal) && path.EndsWith("/budget", StringComparison.Ordinal) && status == HttpStatusCode.BadRequest)
            {
                Assert.True(result.Body.GetProperty("field").GetString() == "monthlyBudgetCents", $"{body}: {result.Body}"); // the field, not a bare 400
            }
        }

        // An empty body, or the JSON null, says so in the client's terms (ASP.NET's own message named the C# parameter).
        foreach (var (path, content) in new[] { ("/api/v1/admin/communities/c1/budget", "null"), ("/api/v1/admin/agents/a1", "null"), ("/api/v1/admin/communities/c1", "") })
        {
            using var empty = new HttpRequestMessage(HttpMethod.Put, path) { Content = new StringContent(content, System.Text.Encoding.UTF8, "application/json") };
            empty.Headers.Authorization = new AuthenticationHeaderValue("Bearer", Operator(p));
            using var refused = await http.SendAsync(empty, TestContext.Current.CancellationToken);
            var problem = await refused.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken);
            Assert.True(refused.StatusCode == HttpStatusCode.BadRequest, $"{path} '{content}': {(int)refused.StatusCode} {problem}");
            Assert.Equal(("INVALID_REQUEST", "body", "The body must be a JSON object; it was empty or null."),
                (problem.GetProperty("error").GetString(), problem.GetProperty("field").GetString(), problem.GetProperty("detail").GetString()));
        }

        using (var plain = new HttpRequestMessage(HttpMethod.Put, "/api/v1/admin/communities/c1/budget") { Content = new StringContent("monthlyBudgetCents=5") })
        {
            plain.Headers.Authorization = new AuthenticationHeaderValue("Bearer", Operator(p));
            using var refused = await http.SendAsync(plain, TestContext.Current.CancellationToken);
            Assert.Equal(HttpStatusCode.UnsupportedMediaType, refused.StatusCode);
            var problem = await refused.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken);
            Assert.Equal("UNSUPPORTED_MEDIA_TYPE", problem.GetProperty("error").GetString());
            // It says what to send instead ("The request could not be served." named nothing).
            Assert.Equal("Content-Type", problem.GetProperty("field").GetString());
            Assert.Contains("Content-Type: application/json", problem.GetProperty("detail").GetString(), StringComparison.Ordinal);
            Assert.Contains("text/plain", problem.GetProperty("detail").GetString(), StringComparison.Ordinal);
        }

        // A JSON body in a charset the reader refuses was a 500 (the binder's InvalidOperationException); the budget stays.
        foreach (var charset in new[] { "bogus", "", "utf-7" })
        {
            using var bogus = new HttpRequestMessage(HttpMethod.Put, "/api/v1/admin/communities/c1/budget") { Content = new StringContent("""{"monthlyBudgetCents":5}""") };
            bogus.Content.Headers.Remove("Content-Type");
            bogus.Content.Headers.TryAddWithoutValidation("Content-Type", "application/json; charset=" + charset);
            bogus.Headers.Authorization = new AuthenticationHeaderValue("Bearer", Operator(p));
            using var refused = await http.SendAsync(bogus, TestContext.Current.CancellationToken);
            var text = await refused.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
            Assert.True(refused.StatusCode == HttpStatusCode.UnsupportedMediaType, $"charset={charset}: {refused.StatusCode} {text}");
            var problem = JsonDocument.Parse(text).RootElement;
            Assert.Equal(("UNSUPPORTED_MEDIA_TYPE", "Content-Type"), (problem.GetProperty("error").GetString(), problem.GetProperty("field").GetString()));
            Assert.Contains("charset=" + charset, problem.GetProperty("detail").GetString(), StringComparison.Ordinal);
        }

        foreach (var body in new object[] { new { lotId = "l1", amountMicro = -5 }, new { lotId = "l1", amountMicro = 0 }, new { lotId = "l1", amountMicro = long.MaxValue }, new { lotId = "bad id", amountMicro = 5 },
            new { lotId = "l1", amountCents = -1 }, new { lotId = "l1", amountCents = 0 }, new { lotId = "l1", amountCents = long.MaxValue },
            new { lotId = "l1", amountCents = -1_844_674_407_370_800 }, // × 10,000 wraps around to +1,551,616 unchecked
            new { lotId = "l1", amountMicro = "7" } }) // amounts are JSON numbers, not strings
        {
            var grant = await SendAsync(http, HttpMethod.Post, "/api/v1/admin/communities/c1/credits", Operator(p), body);
            Assert.True(grant.Status == HttpStatusCode.BadRequest, $"{body}: {grant.Status} {grant.Body}");
        }

        Assert.Equal(HttpStatusCode.NotFound, (await SendAsync(http, HttpMethod.Post, "/api/v1/admin/communities/nope/credits", Operator(p), new { lotId = "l2", amountMicro = 5 })).Status);
        foreach (var (body, field) in new (object, string)[]
        {
            (new { reservationId = "bad id!", amountMicro = 5 }, "reservationId"),
            (new { reservationId = "s0", amountMicro = 5, promptTokens = -100 }, "promptTokens"),
            (new { reservationId = "s0", amountMicro = 5, agentId = new string('a', 1_000_000) }, "agentId"),
            (new { reservationId = "s0", amountMicro = 5, model = "m\u0000" }, "model"),
        })
        {
            var refused = await SendAsync(http, HttpMethod.Post, "/api/v1/admin/communities/c1/spend", Operator(p), body);
            Assert.True(refused.Status == HttpStatusCode.BadRequest && refused.Body.GetProperty("field").GetString() == field, $"{field}: {refused.Status} {refused.Body}");
        }

        var spend = await SendAsync(http, HttpMethod.Post, "/api/v1/admin/communities/c1/spend", Operator(p), new { reservationId = "s1", amountMicro = 5 });
        Assert.Equal(HttpStatusCode.PaymentRequired, spend.Status);
        Assert.Equal("BUDGET_EXCEEDED", spend.Body.GetProperty("error").GetString());

        await using var scope = p.Freeside.Services.CreateAsyncScope();
        var budget = await scope.ServiceProvider.GetRequiredService<Freeside.Budgets.BudgetStore>().GetAsync("c1", TestContext.Current.CancellationToken);
        Assert.Equal((100L, 0L, 0L, 0L), (budget!.MonthlyBudgetCents, budget.CommittedMicro, budget.ReservedMicro, budget.CreditBalanceMicro));
    }
}
