using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Arrakis.Freeside.Audit;
using Arrakis.Freeside.Seeding;
using Arrakis.Shared.Storage;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace Arrakis.Freeside.Tests.Invoke;

/// <summary>freeside on PostgreSQL behind a proxy that cuts the database away and gives it back, as a failover does.</summary>
public sealed class DatabaseOutageTests
{
    const string Community = "test-community-staging-001";
    static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(60) };

    static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_call_cut_off_by_an_outage_answers_503_and_its_retry_after_recovery_runs_and_charges_once()
    {
        var (pg, proxy) = TcpProxy.ToTestPostgres("t_outage_");
        await using var _ = proxy;
        pg.Timeout = 3;
        await using var p = await Platform.StartAsync("postgres", new Dictionary<string, string?>
        {
            ["ConnectionStrings:Freeside"] = pg.ConnectionString,
            ["Providers:Local:TokenDelayMs"] = "20",
            ["RateLimits:Free:CommunityPerMinute"] = "1000",
            ["RateLimits:Free:UserPerMinute"] = "1000",
        });
        await Seeder.For(p.Freeside.Services.GetRequiredService<Database>()).SeedAsync(Ct);
        var before = await BudgetAsync(p);

        const string body = """{"prompt":"Write a long story about dunes","model":"cheap","max_tokens":100,"idempotency_key":"outage-1"}""";
        var call = InvokeAsync(p, body);
        await Task.Delay(500, Ct); // finn is generating (20 ms a token)
        proxy.Cut();
        NpgsqlConnection.ClearAllPools();
        var sw = Stopwatch.StartNew();
        using (var failed = await call)
        {
            var text = await failed.Content.ReadAsStringAsync(Ct);
            Assert.True(failed.StatusCode == HttpStatusCode.ServiceUnavailable, $"{(int)failed.StatusCode} {text}");
            Assert.Equal(("SERVICE_UNAVAILABLE", "database"), (JsonDocument.Parse(text).RootElement.GetProperty("error").GetString(), JsonDocument.Parse(text).RootElement.GetProperty("dependency").GetString()));
        }

        // A new call during the outage fails fast with the same answer.
        sw.Restart();
        using (var refused = await InvokeAsync(p, """{"prompt":"Say hi","model":"cheap","idempotency_key":"outage-2"}"""))
        {
            var text = await refused.Content.ReadAsStringAsync(Ct);
            Assert.True(refused.StatusCode == HttpStatusCode.ServiceUnavailable, $"{(int)refused.StatusCode} {text}");
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"took {sw.Elapsed}");
        }

        proxy.Restore();
        await WaitHealthyAsync(p);

        // The answer said "retry with the same idempotency key": the retry runs (within a few seconds, not after the key's
        // 10-minute lease) and is charged once; the cut-off call's hold is gone without waiting for the reaper's 300 s TTL.
        var retried = Stopwatch.StartNew();
        string answer;
        HttpStatusCode status;
        do
        {
            await Task.Delay(250, Ct);
            using var retry = await InvokeAsync(p, body);
            (status, answer) = (retry.StatusCode, await retry.Content.ReadAsStringAsync(Ct));
        }
        while (status == HttpStatusCode.Conflict && retried.Elapsed < TimeSpan.FromSeconds(10));

        Assert.True(status == HttpStatusCode.OK, $"{(int)status} {answer}");
        var cost = JsonDocument.Parse(answer).RootElement.GetProperty("cost_micro").GetInt64();
        Assert.True(cost > 0);
        var after = await BudgetAsync(p);
        Assert.Equal(before.GetProperty("committedMicro").GetInt64() + cost, after.GetProperty("committedMicro").GetInt64());
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64());
        using (var replay = await InvokeAsync(p, body))
        {
            Assert.Equal("true", replay.Headers.GetValues("Idempotency-Replayed").Single());
            Assert.Equal(cost, (await replay.Content.ReadFromJsonAsync<JsonElement>(Ct)).GetProperty("cost_micro").GetInt64());
        }

        Assert.Equal(after.GetProperty("committedMicro").GetInt64(), (await BudgetAsync(p)).GetProperty("committedMicro").GetInt64());
        await AssertConservedAsync(p);
    }

    /// <summary>
    /// A black-holed database (connections stay open, nothing answers: a failover or a network partition) makes health
    /// answer 503 unhealthy within its 3 s ping timeout. It took a minute: cancelling the ping waited on a cancel request
    /// that could not get through either.
    /// </summary>
    [Fact]
    public async Task Health_answers_503_within_seconds_when_the_database_stops_answering()
    {
        var (pg, proxy) = TcpProxy.ToTestPostgres("t_outage_");
        await using var _ = proxy;
        pg.Remove("Timeout"); // Npgsql's defaults, as production runs
        await using var p = await Platform.StartAsync("postgres", new Dictionary<string, string?> { ["ConnectionStrings:Freeside"] = pg.ConnectionString });
        await WaitHealthyAsync(p);

        proxy.Freeze();
        var sw = Stopwatch.StartNew();
        using var health = await Http.GetAsync(p.FreesideUrl + "/health", Ct);
        sw.Stop();
        Assert.Equal(HttpStatusCode.ServiceUnavailable, health.StatusCode);
        var report = await health.Content.ReadFromJsonAsync<JsonElement>(Ct);
        Assert.Equal(("unhealthy", "database_unreachable"), (report.GetProperty("status").GetString(), report.GetProperty("error").GetString()));
        // Its checks take at most 3 s (the ping) and 4 s (any other); the bound leaves room for a busy CI machine and is
        // still far from the minute it took.
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(15), $"health took {sw.Elapsed}");
    }

    /// <summary>
    /// A database that stops answering mid-run (connections open, nothing passes) makes an invoke answer 503
    /// SERVICE_UNAVAILABLE (database) within the request-path timeout (Database:RequestTimeout, 5 s by default), not
    /// after Npgsql's 30 s command timeout, its cancel request and a retry's connect timeout (over a minute); once the
    /// database answers again, calls run and the ledger balances.
    /// </summary>
    [Fact]
    public async Task An_invoke_answers_503_within_seconds_when_the_database_stops_answering_and_runs_again_after()
    {
        var (pg, proxy) = TcpProxy.ToTestPostgres("t_outage_");
        await using var _ = proxy;
        pg.Remove("Timeout"); // Npgsql's defaults, as production runs
        await using var p = await Platform.StartAsync("postgres", new Dictionary<string, string?>
        {
            ["ConnectionStrings:Freeside"] = pg.ConnectionString,
            ["RateLimits:Free:CommunityPerMinute"] = "1000",
            ["RateLimits:Free:UserPerMinute"] = "1000",
        });
        await Seeder.For(p.Freeside.Services.GetRequiredService<Database>()).SeedAsync(Ct);
        using (var warm = await InvokeAsync(p, """{"prompt":"Say hi","model":"cheap","idempotency_key":"blackhole-warm"}"""))
        {
            Assert.Equal(HttpStatusCode.OK, warm.StatusCode);
        }

        proxy.Freeze();
        var sw = Stopwatch.StartNew();
        using (var frozen = await InvokeAsync(p, """{"prompt":"Say hi","model":"cheap","idempotency_key":"blackhole-1"}"""))
        {
            sw.Stop();
            var text = await frozen.Content.ReadAsStringAsync(Ct);
            Assert.True(frozen.StatusCode == HttpStatusCode.ServiceUnavailable, $"{(int)frozen.StatusCode} after {sw.Elapsed}: {text}");
            var error = JsonDocument.Parse(text).RootElement;
            Assert.Equal(("SERVICE_UNAVAILABLE", "database"), (error.GetProperty("error").GetString(), error.GetProperty("dependency").GetString()));
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(15), $"the invoke took {sw.Elapsed}");
        }

        proxy.Thaw();
        await WaitHealthyAsync(p);
        var before = await BudgetAsync(p);
        using (var after = await InvokeAsync(p, """{"prompt":"Say hi again","model":"cheap","idempotency_key":"blackhole-2"}"""))
        {
            var text = await after.Content.ReadAsStringAsync(Ct);
            Assert.True(after.StatusCode == HttpStatusCode.OK, $"{(int)after.StatusCode} {text}");
            var cost = JsonDocument.Parse(text).RootElement.GetProperty("cost_micro").GetInt64();
            Assert.True(cost > 0);
            Assert.Equal(before.GetProperty("committedMicro").GetInt64() + cost, (await BudgetAsync(p)).GetProperty("committedMicro").GetInt64());
        }

        await AssertConservedAsync(p);
    }

    /// <summary>
    /// A reserve freeside stopped waiting for (503 at Database__RequestTimeout) that the database runs once it answers
    /// again, before the connection breaks: it holds the worst case and claims the key for a call that will never run.
    /// The retry with the same key, which the 503 invites, got 409 REQUEST_IN_PROGRESS until the key's 10-minute lease
    /// lapsed, and the hold kept the budget until the reaper's 300 s TTL. Now both are freed once the late reserve ends,
    /// and the retry runs and is charged once.
    /// </summary>
    [Fact]
    public async Task A_reserve_that_commits_after_its_503_neither_locks_the_retry_out_nor_keeps_the_budget()
    {
        var (pg, proxy) = TcpProxy.ToTestPostgres("t_outage_");
        await using var _ = proxy;
        pg.Remove("Timeout"); // Npgsql's defaults, as production runs: the frozen command is not broken for 30 s
        await using var p = await StartWithRequestTimeoutAsync(pg, """{"prompt":"Say hi","model":"cheap","idempotency_key":"late-warm"}""");
        var before = await BudgetAsync(p);
        await using var db = await DirectAsync(pg);
        async Task<long> CountAsync(string sql) => long.Parse(await ScalarAsync(db, sql), System.Globalization.CultureInfo.InvariantCulture);

        var reservations = await CountAsync("SELECT count(*) FROM reservations");

        const string body = """{"prompt":"Say hi late","model":"cheap","idempotency_key":"late-1"}""";
        proxy.Freeze();
        using (var timedOut = await InvokeAsync(p, body))
        {
            var text = await timedOut.Content.ReadAsStringAsync(Ct);
            Assert.True(timedOut.StatusCode == HttpStatusCode.ServiceUnavailable, $"{(int)timedOut.StatusCode} {text}");
            Assert.Equal("database", JsonDocument.Parse(text).RootElement.GetProperty("dependency").GetString());
        }

        // The database answers again; the reserve the proxy held reaches it and commits.
        proxy.Thaw();
        var landed = Stopwatch.StartNew();
        while (await CountAsync("SELECT count(*) FROM reservations") == reservations)
        {
            Assert.True(landed.Elapsed < TimeSpan.FromSeconds(20), "the held reserve never reached the database");
            await Task.Delay(50, Ct);
        }

        await WaitHealthyAsync(p);
        var (retry, answer) = await RetryWhileInProgressAsync(p, body);
        using var _retry = retry;
        Assert.True(retry.StatusCode == HttpStatusCode.OK, $"{(int)retry.StatusCode}: {answer}");
        var cost = JsonDocument.Parse(answer).RootElement.GetProperty("cost_micro").GetInt64();
        Assert.True(cost > 0);
        var after = await BudgetAsync(p);
        Assert.Equal(before.GetProperty("committedMicro").GetInt64() + cost, after.GetProperty("committedMicro").GetInt64());
        Assert.Equal(0, after.GetProperty("reservedMicro").GetInt64()); // the late hold is released, not left to the reaper
        Assert.Equal((0L, 1L), (await CountAsync("SELECT count(*) FROM reservations WHERE status = 'pending'"), await CountAsync("SELECT count(*) FROM reservations WHERE status = 'voided'")));
        Assert.Equal(1, await CountAsync("SELECT count(*) FROM usage_records WHERE idempotency_key = 'late-1'")); // charged once
        await AssertConservedAsync(p);
    }

    /// <summary>
    /// A call that takes over a key whose earlier owner died (its lease lapsed) and is then refused (here the budget cannot
    /// cover it) frees the key again; when the database fails at that instant, the key goes to ReleaseRetries and the
    /// caller still gets the refusal. The failure escaped as a 503 instead, and the key stayed the refused call's: the
    /// retry got 409 REQUEST_IN_PROGRESS for the key's whole 10-minute lease.
    /// </summary>
    [Fact]
    public async Task A_refused_takeover_whose_key_release_is_cut_off_frees_the_key_once_the_database_answers()
    {
        var (pg, proxy) = TcpProxy.ToTestPostgres("t_outage_");
        await using var _ = proxy;
        pg.Timeout = 3;
        await using var p = await StartWithRequestTimeoutAsync(pg, """{"prompt":"Say hi","model":"cheap","idempotency_key":"takeover-seed"}""");
        await using var db = await DirectAsync(pg);
        Task<string> QueryAsync(string sql) => ScalarAsync(db, sql);

        // The key of a call whose freeside died: in progress, for the same request (the hash leaves the key out), its
        // lease lapsed 11 minutes ago.
        await QueryAsync($"""
            INSERT INTO idempotency_keys (scope, idem_key, request_hash, state, owner, created_at, updated_at)
            SELECT scope, 'takeover-1', request_hash, 'in_progress', 'res_{Guid.NewGuid():N}', (extract(epoch FROM now()) * 1000)::BIGINT,
                   (extract(epoch FROM now() - interval '11 minutes') * 1000)::BIGINT
            FROM idempotency_keys WHERE idem_key = 'takeover-seed'
            """);
        var limit = await QueryAsync($"SELECT limit_micro FROM budget_months WHERE community_id = '{Community}'");
        await QueryAsync($"UPDATE budget_months SET limit_micro = committed_micro + reserved_micro WHERE community_id = '{Community}'");
        // Freeing that key waits on a lock the test holds, so the database can be cut away at that instant.
        await QueryAsync("""
            CREATE FUNCTION t_hold_key_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_advisory_xact_lock(7402); RETURN OLD; END $$;
            CREATE TRIGGER t_hold_key_delete BEFORE DELETE ON idempotency_keys FOR EACH ROW WHEN (OLD.idem_key = 'takeover-1') EXECUTE FUNCTION t_hold_key_delete();
            SELECT pg_advisory_lock(7402);
            """);

        const string body = """{"prompt":"Say hi","model":"cheap","idempotency_key":"takeover-1"}""";
        var call = InvokeAsync(p, body);
        var waiting = Stopwatch.StartNew();
        string pid;
        while ((pid = await QueryAsync("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' AND pid <> pg_backend_pid()")) == "")
        {
            Assert.True(waiting.Elapsed < TimeSpan.FromSeconds(20), "the refused takeover never tried to free its key");
            await Task.Delay(20, Ct);
        }

        proxy.Cut();
        NpgsqlConnection.ClearAllPools();
        await QueryAsync($"SELECT pg_terminate_backend({pid})"); // the key's delete dies with its connection, uncommitted
        while (await QueryAsync($"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") != "0")
        {
            await Task.Delay(20, Ct);
        }

        await QueryAsync("SELECT pg_advisory_unlock(7402)");
        using (var refused = await call)
        {
            var text = await refused.Content.ReadAsStringAsync(Ct);
            Assert.True(refused.StatusCode == HttpStatusCode.PaymentRequired, $"{(int)refused.StatusCode} {text}");
            Assert.Equal("BUDGET_EXCEEDED", JsonDocument.Parse(text).RootElement.GetProperty("error").GetString());
        }

        Assert.Equal("in_progress", await QueryAsync("SELECT state FROM idempotency_keys WHERE idem_key = 'takeover-1'")); // still held

        proxy.Restore();
        await WaitHealthyAsync(p);
        var before = await BudgetAsync(p);
        await QueryAsync($"UPDATE budget_months SET limit_micro = {limit} WHERE community_id = '{Community}'");
        var (retry, answer) = await RetryWhileInProgressAsync(p, body);
        using var _retry = retry;
        Assert.True(retry.StatusCode == HttpStatusCode.OK, $"{(int)retry.StatusCode}: {answer}");
        var cost = JsonDocument.Parse(answer).RootElement.GetProperty("cost_micro").GetInt64();
        Assert.True(cost > 0);
        Assert.Equal("1", await QueryAsync("SELECT count(*) FROM usage_records WHERE idempotency_key = 'takeover-1'")); // charged once
        Assert.Equal(before.GetProperty("committedMicro").GetInt64() + cost, (await BudgetAsync(p)).GetProperty("committedMicro").GetInt64());
        await AssertConservedAsync(p);
    }

    /// <summary>
    /// A finalize freeside stopped waiting for (503 at Database__RequestTimeout), once the database answers again. Either
    /// it lands first: the call is charged once and its answer stored with the charge, so the retry with the same key
    /// replays that answer, and the releases tried after it (freeside's, then ReleaseRetries') find the reservation posted
    /// and the key complete and change nothing. Or a release lands first: the finalize finds the reservation voided and
    /// posts nothing, and the retry runs and is charged once. Never twice (C4), and never a 409 for the key's lease.
    /// </summary>
    [Fact]
    public async Task A_finalize_that_commits_after_its_503_charges_once_and_its_retry_replays_it_or_runs_once()
    {
        var (pg, proxy) = TcpProxy.ToTestPostgres("t_outage_");
        await using var _ = proxy;
        pg.Remove("Timeout");
        await using var p = await StartWithRequestTimeoutAsync(pg, """{"prompt":"Say hi","model":"cheap","max_tokens":5,"idempotency_key":"late-fin-warm"}""",
            ("Providers:Local:TokenDelayMs", "100"));
        var before = await BudgetAsync(p);
        await using var db = await DirectAsync(pg);
        Task<string> QueryAsync(string sql) => ScalarAsync(db, sql);

        const string body = """{"prompt":"Write a long story about dunes","model":"cheap","max_tokens":100,"idempotency_key":"late-fin"}""";
        var call = InvokeAsync(p, body);
        await Task.Delay(700, Ct); // reserved; finn is generating (100 ms a token, about 3 s)
        proxy.Freeze();
        using (var timedOut = await call)
        {
            var text = await timedOut.Content.ReadAsStringAsync(Ct);
            Assert.True(timedOut.StatusCode == HttpStatusCode.ServiceUnavailable, $"{(int)timedOut.StatusCode} {text}");
        }

        proxy.Thaw();
        var landed = Stopwatch.StartNew();
        while (await QueryAsync("SELECT count(*) FROM reservations WHERE status = 'pending'") != "0")
        {
            Assert.True(landed.Elapsed < TimeSpan.FromSeconds(20), "the held finalize never reached the database");
            await Task.Delay(50, Ct);
        }

        // Which landed first decides the late call's reservation: posted by its finalize, or voided by a release.
        var late = await QueryAsync("SELECT status FROM reservations ORDER BY created_at DESC, id LIMIT 1");
        Assert.Contains(late, new[] { "posted", "voided" });
        await WaitHealthyAsync(p);
        // A release that landed first is followed by its key's abandon (freeside's own, or ReleaseRetries' within a
        // second): until then the key is still the late call's (409), never for the key's 10-minute lease.
        var (retry, answer) = await RetryWhileInProgressAsync(p, body);
        using var _retry = retry;
        Assert.True(retry.StatusCode == HttpStatusCode.OK, $"{(int)retry.StatusCode}: {answer}");
        Assert.Equal(late == "posted", retry.Headers.Contains("Idempotency-Replayed")); // a posted call is replayed, never run again
        Assert.Equal("1", await QueryAsync("SELECT count(*) FROM usage_records WHERE idempotency_key = 'late-fin'")); // charged once
        var charged = long.Parse(await QueryAsync("SELECT cost_micro FROM usage_records WHERE idempotency_key = 'late-fin'"), System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(charged > 0);
        Assert.Equal(charged, JsonDocument.Parse(answer).RootElement.GetProperty("cost_micro").GetInt64()); // the answer says what was charged
        Assert.Equal("0", await QueryAsync("SELECT count(*) FROM reservations WHERE status = 'pending'"));
        Assert.Equal(before.GetProperty("committedMicro").GetInt64() + charged, (await BudgetAsync(p)).GetProperty("committedMicro").GetInt64());
        await AssertConservedAsync(p);
    }

    /// <summary>
    /// freeside on the schema behind the proxy, with a 2 s request-path timeout and rate limits out of the way, seeded,
    /// its connections warmed by one invoke (<paramref name="warmBody"/>).
    /// </summary>
    static async Task<Platform> StartWithRequestTimeoutAsync(NpgsqlConnectionStringBuilder pg, string warmBody, params (string Key, string? Value)[] extra)
    {
        var settings = new Dictionary<string, string?>
        {
            ["ConnectionStrings:Freeside"] = pg.ConnectionString,
            [StorageOptions.RequestTimeoutSetting] = "00:00:02",
            ["RateLimits:Free:CommunityPerMinute"] = "1000",
            ["RateLimits:Free:UserPerMinute"] = "1000",
        };
        foreach (var (key, value) in extra)
        {
            settings[key] = value;
        }

        var p = await Platform.StartAsync("postgres", settings);
        try
        {
            await Seeder.For(p.Freeside.Services.GetRequiredService<Database>()).SeedAsync(Ct);
            using var warm = await InvokeAsync(p, warmBody);
            Assert.Equal(HttpStatusCode.OK, warm.StatusCode);
            return p;
        }
        catch
        {
            await p.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// Sends <paramref name="body"/> again while it is answered 409 REQUEST_IN_PROGRESS, for up to 10 s: the time for the
    /// late call's hold and key to be freed (ReleaseRetries runs every second), far short of the key's 10-minute lease.
    /// </summary>
    static async Task<(HttpResponseMessage Response, string Body)> RetryWhileInProgressAsync(Platform p, string body)
    {
        var retried = Stopwatch.StartNew();
        while (true)
        {
            var retry = await InvokeAsync(p, body);
            var answer = await retry.Content.ReadAsStringAsync(Ct);
            if (retry.StatusCode != HttpStatusCode.Conflict || retried.Elapsed > TimeSpan.FromSeconds(10))
            {
                return (retry, answer);
            }

            retry.Dispose();
            await Task.Delay(250, Ct);
        }
    }

    /// <summary>A connection straight to the test schema, past the proxy: it sees what lands while freeside cannot.</summary>
    static async Task<NpgsqlConnection> DirectAsync(NpgsqlConnectionStringBuilder pg)
    {
        var db = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(TestStorage.RequirePostgres()) { SearchPath = pg.SearchPath }.ConnectionString);
        await db.OpenAsync(Ct);
        return db;
    }

    static async Task<string> ScalarAsync(NpgsqlConnection db, string sql)
    {
        await using var command = new NpgsqlCommand(sql, db);
        return Convert.ToString(await command.ExecuteScalarAsync(Ct), System.Globalization.CultureInfo.InvariantCulture) ?? "";
    }

    static async Task WaitHealthyAsync(Platform p)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            using var r = await Http.GetAsync(p.FreesideUrl + "/health", Ct);
            if (r.StatusCode == HttpStatusCode.OK)
            {
                return;
            }

            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(30), "freeside did not become healthy again");
            await Task.Delay(100, Ct);
        }
    }

    static string UserToken(Platform p) =>
        p.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", "arrakis", new Dictionary<string, object>
        {
            ["v"] = 1,
            ["tenant_id"] = "test-tenant",
            ["access_level"] = "free",
            ["pool_id"] = "cheap",
            ["allowed_pools"] = new[] { "cheap" },
        }, TimeSpan.FromMinutes(5));

    static async Task<HttpResponseMessage> InvokeAsync(Platform p, string body)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, p.FreesideUrl + "/api/agents/invoke")
        {
            Content = new StringContent(body, Encoding.UTF8, "application/json"),
        };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", UserToken(p));
        return await Http.SendAsync(request, Ct);
    }

    static async Task<JsonElement> BudgetAsync(Platform p)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, $"{p.FreesideUrl}/api/v1/communities/{Community}/budget");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", UserToken(p));
        using var response = await Http.SendAsync(request, Ct);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return await response.Content.ReadFromJsonAsync<JsonElement>(Ct);
    }

    static async Task AssertConservedAsync(Platform p)
    {
        var report = await p.Freeside.Services.GetRequiredService<ConservationAudit>().RunAsync(Ct);
        Assert.True(report.Passed, string.Join("\n", report.Communities.SelectMany(c => c.Checks).SelectMany(c => c.Violations)));
    }
}
