using Arrakis.Freeside.Audit;
using Arrakis.Freeside.Budgets;
using Arrakis.Freeside.Seeding;
using Arrakis.Shared.Storage;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;

namespace Arrakis.Cli.Tests.Commands;

public sealed class SeedCommandTests
{
    public static TheoryData<string> Engines => TestStorage.Engines();

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Seed_is_rerunnable_and_leaves_a_lot_of_5000_cents_with_3000_remaining(string engine)
    {
        var options = TestStorage.Options(engine, "freeside");
        await using var db = new Database(options);
        await new Migrator(db).ApplyAsync(Migrator.FromAssembly(typeof(Database).Assembly, db.Engine)
            .Concat(Migrator.FromAssembly(typeof(Arrakis.Freeside.FreesideService).Assembly, db.Engine)), TestContext.Current.CancellationToken);
        var first = await Seeder.For(db).SeedAsync(TestContext.Current.CancellationToken);
        var second = await Seeder.For(db).SeedAsync(TestContext.Current.CancellationToken);
        Assert.Equal(first, second);
        Assert.Contains("COMMUNITY_ID=test-community-staging-001", first);
        Assert.Contains("AGENT_ID_B=test-agent-staging-002", first);
        Assert.Contains("CREDIT_LOT_ID=test-credit-lot-staging-001", first);

        await using var c = await db.OpenAsync(TestContext.Current.CancellationToken);
        Assert.Equal(30_000_000L, await Dapper.SqlMapper.ExecuteScalarAsync<long>(c, "SELECT remaining_micro FROM credit_lots WHERE id = 'test-credit-lot-staging-001'"));
        Assert.Equal(50_000_000L, await Dapper.SqlMapper.ExecuteScalarAsync<long>(c, "SELECT amount_micro FROM credit_lots WHERE id = 'test-credit-lot-staging-001'"));
        Assert.Equal("test-community-staging-001", await Dapper.SqlMapper.ExecuteScalarAsync<string>(c, "SELECT community_id FROM tenant_aliases WHERE tenant_id = 'test-tenant'"));
        var budget = await new BudgetStore(db, TimeProvider.System).GetAsync(Seeder.CommunityId, TestContext.Current.CancellationToken);
        Assert.Equal((10_000L, 2_000L), (budget!.MonthlyBudgetCents, budget.Committed));

        var meters = new ServiceCollection().AddMetrics().BuildServiceProvider().GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>();
        Assert.True((await new ConservationAudit(db, TimeProvider.System, new AuditMetrics(meters), NullLogger<ConservationAudit>.Instance).RunAsync(TestContext.Current.CancellationToken)).Passed);
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task A_seed_that_stopped_before_finalizing_does_not_block_the_next_seed(string engine)
    {
        // A seed stopped between reserve and finalize (killed, database lost) leaves a hold the reaper expires. Its fixed
        // spend id could never be finalized after that, so every later seed failed with "Expired" and the lot kept 5000 cents.
        var ct = TestContext.Current.CancellationToken;
        await using var db = new Database(TestStorage.Options(engine, "freeside"));
        await new Migrator(db).ApplyAsync(Migrator.FromAssembly(typeof(Database).Assembly, db.Engine)
            .Concat(Migrator.FromAssembly(typeof(Arrakis.Freeside.FreesideService).Assembly, db.Engine)), ct);
        var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        var meters = new ServiceCollection().AddMetrics().BuildServiceProvider().GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>();
        var ledger = new Arrakis.Freeside.Ledger.Ledger(db, time, new Arrakis.Freeside.Ledger.LedgerOptions(), new Arrakis.Freeside.Ledger.LedgerMetrics(meters));
        await new Arrakis.Freeside.Communities.CommunityStore(db, time).UpsertAsync(Seeder.CommunityId, Seeder.CommunityName, Arrakis.Shared.Contracts.Tier.Free, Seeder.BudgetCents, ct);
        await ledger.GrantAsync(Seeder.CommunityId, Seeder.CreditLotId, Seeder.LotCents * 10_000, "seed", ct: ct);
        // Two earlier seeds stopped after their reserve: the first hold expired, the second was released.
        Assert.True((await ledger.ReserveAsync(Seeder.CommunityId, Seeder.SpendReservationId, 20_000_000, TimeSpan.FromSeconds(30), null, ct)).Admitted);
        time.Advance(TimeSpan.FromMinutes(1));
        Assert.Equal(1, await ledger.ExpireDueAsync(ct: ct));
        Assert.True((await ledger.ReserveAsync(Seeder.CommunityId, Seeder.SpendAttemptIds[1], 20_000_000, ct: ct)).Admitted);
        await ledger.ReleaseAsync(Seeder.SpendAttemptIds[1], ct);

        var first = await Seeder.For(db, time).SeedAsync(ct);
        var again = await Seeder.For(db, time).SeedAsync(ct);

        Assert.Equal(Seeder.OutputLines, first);
        Assert.Equal(first, again);
        await using var c = await db.OpenAsync(ct);
        Assert.Equal(30_000_000L, await Dapper.SqlMapper.ExecuteScalarAsync<long>(c, "SELECT remaining_micro FROM credit_lots WHERE id = 'test-credit-lot-staging-001'"));
        var statuses = (await Dapper.SqlMapper.QueryAsync<(string Id, string Status)>(c,
            "SELECT id, status FROM reservations WHERE community_id = @id ORDER BY id", new { id = Seeder.CommunityId })).ToList();
        Assert.Equal([(Seeder.SpendReservationId, "expired"), (Seeder.SpendAttemptIds[1], "voided"), (Seeder.SpendAttemptIds[2], "posted")], statuses);
        var budget = await new BudgetStore(db, time).GetAsync(Seeder.CommunityId, ct);
        Assert.Equal(2_000L, budget!.Committed);
        Assert.True((await new ConservationAudit(db, time, new AuditMetrics(meters), NullLogger<ConservationAudit>.Instance).RunAsync(ct)).Passed);
    }

    [Fact]
    public async Task A_seed_the_data_refuses_is_one_line_naming_why_and_exit_1()
    {
        // The operator raised the test community's budget and spent past the seed's 10,000 cents this month; the seed
        // cannot set its budget below that. Before: an unhandled InvalidOperationException and its stack trace.
        var ct = TestContext.Current.CancellationToken;
        var dir = TestStorage.TempDir();
        var error = new StringWriter();
        Assert.Equal(0, await LoaProgram.RunAsync(["seed", "--data-dir", dir], new StringWriter(), error, ct));
        var config = new Microsoft.Extensions.Configuration.ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["LOA_DATA_DIR"] = dir }).Build();
        await using (var db = new Database(StorageOptions.Resolve(config, "freeside")))
        {
            var meters = new ServiceCollection().AddMetrics().BuildServiceProvider().GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>();
            var ledger = new Arrakis.Freeside.Ledger.Ledger(db, TimeProvider.System, new Arrakis.Freeside.Ledger.LedgerOptions(), new Arrakis.Freeside.Ledger.LedgerMetrics(meters));
            Assert.Equal(Arrakis.Freeside.Communities.CommunityStatus.Updated,
                (await new Arrakis.Freeside.Communities.CommunityStore(db, TimeProvider.System).SetBudgetAsync(Seeder.CommunityId, 20_000, ct)).Status);
            Assert.True((await ledger.ReserveAsync(Seeder.CommunityId, "big-spend", 15_000 * 10_000L, ct: ct)).Admitted is false); // the lot holds 3000 cents
            await ledger.GrantAsync(Seeder.CommunityId, "big-lot", 20_000 * 10_000L, "grant", ct: ct);
            Assert.True((await ledger.ReserveAsync(Seeder.CommunityId, "big-spend", 15_000 * 10_000L, ct: ct)).Admitted);
        }

        error = new StringWriter();
        var exit = await LoaProgram.RunAsync(["seed", "--data-dir", dir], new StringWriter(), error, ct);

        Assert.Equal(1, exit);
        var line = Assert.Single(error.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("loa: Seeding the community failed: test-community-staging-001 has already spent or reserved more than the seed's budget of 10000 cents", line, StringComparison.Ordinal);
    }

    [Fact]
    public void Ecs_exec_prints_the_exact_aws_command()
    {
        // deploy/terraform: the cluster is named after the prefix, and the migration task runs the loa image in a container named migrate.
        var command = Arrakis.Cli.Commands.SeedCommand.EcsCommand("arrakis-staging", null);
        Assert.Equal(
            "aws ecs run-task --cluster arrakis-staging --launch-type FARGATE --task-definition arrakis-staging-migrate --network-configuration "
            + "\"awsvpcConfiguration={subnets=[$(terraform -chdir=deploy/terraform output -json private_subnets | jq -r 'join(\",\")')],"
            + "securityGroups=[$(terraform -chdir=deploy/terraform output -raw services_security_group)],assignPublicIp=DISABLED}\" "
            + "--overrides '{\"containerOverrides\":[{\"name\":\"migrate\",\"command\":[\"seed\"]}]}'",
            command);
        Assert.Contains("--task-definition arrakis-staging-migrate:12 ", Arrakis.Cli.Commands.SeedCommand.EcsCommand("arrakis-staging", "arrakis-staging-migrate:12"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Seed_takes_a_postgres_url_and_seeds_the_schema_it_names()
    {
        var pg = new Npgsql.NpgsqlConnectionStringBuilder(TestStorage.RequirePostgres());
        var schema = TestStorage.TrackSchema("t_seed_url_" + Guid.NewGuid().ToString("N")[..12]);
        var user = Uri.EscapeDataString(pg.Username!) + (pg.Password is { } pw ? ":" + Uri.EscapeDataString(pw) : "");
        var url = $"postgres://{user}@{pg.Host}:{pg.Port}/{Uri.EscapeDataString(pg.Database!)}?search_path={schema}";

        var (exit, stdout, stderr) = await LoaProcess.RunAsync("seed", "--db-url", url, "--data-dir", TestStorage.TempDir());
        Assert.True(exit == 0, stderr);
        Assert.Contains("CREDIT_LOT_ID=test-credit-lot-staging-001", stdout, StringComparison.Ordinal);
        await using var c = new Npgsql.NpgsqlConnection(new Npgsql.NpgsqlConnectionStringBuilder(pg.ConnectionString) { SearchPath = schema }.ConnectionString);
        Assert.Equal(30_000_000L, await Dapper.SqlMapper.ExecuteScalarAsync<long>(c, "SELECT remaining_micro FROM credit_lots WHERE id = 'test-credit-lot-staging-001'"));
    }
}

public sealed class AuditCommandTests
{
    /// <summary>
    /// <c>loa audit</c> judges a reused idempotency key (C4) by the retention the services run with: a key charged twice
    /// two days apart is a second charge under a 3-day retention, and a new request under the default 25 h.
    /// </summary>
    [Fact]
    public async Task Audit_judges_reused_keys_by_the_configured_idempotency_retention()
    {
        var ct = TestContext.Current.CancellationToken;
        var dataDir = TestStorage.TempDir();
        var env = new Dictionary<string, string> { ["LOA_DATA_DIR"] = dataDir };
        var (seeded, _, seedError) = await LoaProcess.RunAsync(env, "seed", "--data-dir", dataDir);
        Assert.True(seeded == 0, seedError);

        // Two calls charged under one key two days apart, through the ledger as invokes are.
        await using (var db = new Database(StorageOptions.Resolve(Arrakis.Cli.Commands.CliContext.Configuration(dataDir), "freeside")))
        {
            var meters = new ServiceCollection().AddMetrics().BuildServiceProvider().GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>();
            var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow - TimeSpan.FromDays(2));
            var ledger = new Arrakis.Freeside.Ledger.Ledger(db, time, new Arrakis.Freeside.Ledger.LedgerOptions(), new Arrakis.Freeside.Ledger.LedgerMetrics(meters));
            foreach (var call in new[] { "call-1", "call-2" })
            {
                Assert.True((await ledger.ReserveAsync(Seeder.CommunityId, call, 10_000, ct: ct)).Admitted);
                await ledger.FinalizeAsync(call, 5_000, new Arrakis.Freeside.Ledger.UsageRecord("agent-1", "cheap", "m1", 1, 2, "trace-" + call, "key-reused"), null, ct);
                time.Advance(TimeSpan.FromDays(2));
            }
        }

        string C4(string stdout) => stdout.Split('\n').Single(l => l.StartsWith(Seeder.CommunityId + " C4 ", StringComparison.Ordinal));

        var (defaultExit, defaultOut, defaultErr) = await LoaProcess.RunAsync(env, "audit", "--data-dir", dataDir);
        Assert.True(defaultExit == 0, defaultOut + defaultErr);
        Assert.EndsWith("C4 PASS", C4(defaultOut), StringComparison.Ordinal);

        var (longExit, longOut, _) = await LoaProcess.RunAsync(new Dictionary<string, string>(env) { ["Idempotency__Retention"] = "3.00:00:00" }, "audit", "--data-dir", dataDir);
        Assert.Equal(1, longExit);
        Assert.Contains("C4 FAIL idempotency key 'key-reused' charged 2 times", C4(longOut), StringComparison.Ordinal);

        var (badExit, _, badErr) = await LoaProcess.RunAsync(new Dictionary<string, string>(env) { ["Idempotency__Retention"] = "00:10:00" }, "audit", "--data-dir", dataDir);
        Assert.Equal(2, badExit);
        Assert.Contains("Idempotency:Retention must be between 1 and 30 days", badErr, StringComparison.Ordinal);
    }
}

public sealed class LoaProgramTests
{
    [Theory]
    [InlineData("seed")]
    [InlineData("audit")]
    public async Task An_unreachable_database_is_one_line_and_exit_1_not_a_stack_trace(string command)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var port = TestStorage.FreePort(); // nothing listens there
        var exit = await LoaProgram.RunAsync([command, "--db-url", $"Host=127.0.0.1;Port={port};Username=postgres;Timeout=3"], output, error,
            TestContext.Current.CancellationToken);
        Assert.Equal(1, exit);
        var lines = error.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, error.ToString());
        Assert.StartsWith($"loa: database error: Failed to connect to 127.0.0.1:{port}", lines[0]);
        Assert.DoesNotContain(" at ", error.ToString());
    }

    [Fact]
    public void Only_failures_of_the_surroundings_are_shortened()
    {
        Assert.Equal("HTTP request failed: Connection refused (x:1)", LoaProgram.Describe(new HttpRequestException("Connection refused (x:1)")));
        Assert.Equal("cannot read k: denied", LoaProgram.Describe(new AggregateException(new IOException("cannot read k", new IOException("denied")))));
        Assert.Null(LoaProgram.Describe(new InvalidOperationException("a bug"))); // a defect of loa keeps its stack trace
    }
}
