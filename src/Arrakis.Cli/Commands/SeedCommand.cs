using System.CommandLine;
using System.Text.Json;
using Arrakis.Freeside.Audit;
using Arrakis.Freeside.Communities;
using Arrakis.Freeside.Seeding;
using Arrakis.Shared.Storage;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;

namespace Arrakis.Cli.Commands;

/// <summary><c>loa seed</c>: upsert the launch checklist's test data (local SQLite, a PostgreSQL URL, or a running freeside).</summary>
internal static class SeedCommand
{
    static readonly Option<string?> DbUrl = new("--db-url") { Description = "PostgreSQL connection string or postgres:// URL of freeside's database" };
    static readonly Option<string?> FreesideUrl = new("--freeside-url") { Description = "seed a running freeside through its admin routes" };
    static readonly Option<FileInfo?> Key = new("--key") { Description = "PEM of freeside's signing key, to mint operator tokens (with --freeside-url)" };

    public static Command Create()
    {
        var dryRun = new Option<bool>("--dry-run") { Description = "print the plan and the ids, change nothing" };
        var ecs = new Option<bool>("--ecs-exec")
        {
            Description = "print the aws ecs run-task that runs this seed inside the cluster, as a one-off task of the loa image (the <cluster>-migrate task definition, which holds the database secrets)",
        };
        var cluster = new Option<string?>("--cluster") { Description = "ECS cluster (with --ecs-exec); deploy/terraform names it after its prefix, e.g. arrakis-staging" };
        var taskDefinition = new Option<string?>("--task-definition") { Description = "task definition of the loa image (default: <cluster>-migrate)" };
        var command = new Command("seed", "Upsert the staging checklist's test community, alias, agents and credit lot (re-runnable).")
        {
            CliContext.DataDir, DbUrl, FreesideUrl, Key, dryRun, ecs, cluster, taskDefinition,
        };
        command.SetAction(async (parse, ct) =>
        {
            if (parse.GetValue(dryRun))
            {
                foreach (var line in Seeder.PlanLines)
                {
                    Console.WriteLine("PLAN " + line);
                }

                Print(Seeder.OutputLines);
                return 0;
            }

            if (parse.GetValue(ecs))
            {
                if (string.IsNullOrWhiteSpace(parse.GetValue(cluster)))
                {
                    Console.Error.WriteLine("--ecs-exec needs --cluster NAME");
                    return 2;
                }

                Console.WriteLine(EcsCommand(parse.GetValue(cluster)!, parse.GetValue(taskDefinition)));
                return 0;
            }

            if (parse.GetValue(FreesideUrl) is { Length: > 0 } url)
            {
                if (!Uri.TryCreate(url.TrimEnd('/') + "/", UriKind.Absolute, out var baseAddress) || baseAddress.Scheme is not ("http" or "https"))
                {
                    Console.Error.WriteLine($"error: --freeside-url needs an absolute http(s) URL, e.g. http://localhost:3000 (not '{url}')");
                    return 2;
                }

                if (parse.GetValue(Key) is not { Exists: true } pem)
                {
                    Console.Error.WriteLine("--freeside-url needs --key PEM (freeside's signing key, e.g. .loa/staging.pem)");
                    return 2;
                }

                System.Security.Cryptography.ECDsa ecdsa;
                try
                {
                    ecdsa = Keyring.ParsePem(File.ReadAllText(pem.FullName));
                }
                catch (FormatException ex)
                {
                    Console.Error.WriteLine($"error: --key {pem.FullName}: {ex.Message}");
                    return 1;
                }

                using (ecdsa)
                {
                    using var http = new HttpClient { BaseAddress = baseAddress };
                    Print(await Seeder.SeedOverHttpAsync(http, () => OperatorToken(ecdsa), ct));
                }

                return 0;
            }

            await using var db = await OpenAsync(parse);
            if (db is null)
            {
                return 2;
            }

            Print(await Seeder.For(db).SeedAsync(ct));
            return 0;
        });
        return command;
    }

    /// <summary><c>loa audit</c>: run the conservation audit (C1–C5) on freeside's database; exit 1 on any breach.</summary>
    public static Command CreateAudit()
    {
        var command = new Command("audit", "Check the ledger's conservation invariants C1-C5 per community; exit code 1 when any breaks.") { CliContext.DataDir, DbUrl };
        command.SetAction(async (parse, ct) =>
        {
            await using var db = await OpenAsync(parse);
            if (db is null)
            {
                return 2;
            }

            // C4 judges a reused idempotency key by the retention the services run with (Idempotency__Retention).
            var idempotency = new Arrakis.Freeside.Idempotency.IdempotencyOptions();
            try
            {
                CliContext.Configuration(parse.GetValue(CliContext.DataDir)).GetSection(Arrakis.Freeside.Idempotency.IdempotencyOptions.Section).Bind(idempotency);
            }
            catch (InvalidOperationException ex)
            {
                Console.Error.WriteLine($"error: Idempotency__Retention: {ex.InnerException?.Message ?? ex.Message}");
                return 2;
            }

            var invalid = new List<System.ComponentModel.DataAnnotations.ValidationResult>();
            if (!System.ComponentModel.DataAnnotations.Validator.TryValidateObject(idempotency, new(idempotency), invalid, validateAllProperties: true))
            {
                Console.Error.WriteLine("error: " + invalid[0].ErrorMessage);
                return 2;
            }

            var meters = new ServiceCollection().AddMetrics().BuildServiceProvider().GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>();
            var audit = new ConservationAudit(db, TimeProvider.System, new AuditMetrics(meters), NullLogger<ConservationAudit>.Instance, idempotency);
            var report = await audit.RunAsync(ct);
            foreach (var community in report.Communities)
            {
                foreach (var check in community.Checks)
                {
                    Console.WriteLine($"{community.CommunityId} {check.Invariant} {(check.Passed ? "PASS" : "FAIL " + string.Join("; ", check.Violations))}");
                    if (!check.Passed)
                    {
                        Console.Error.WriteLine($"CONSERVATION_VIOLATION community={community.CommunityId} invariant={check.Invariant}");
                    }
                }
            }

            Console.WriteLine(JsonSerializer.Serialize(new { passed = report.Passed, communities = report.Communities.Count }));
            return report.Passed ? 0 : 1;
        });
        return command;
    }

    public static string OperatorToken(System.Security.Cryptography.ECDsa key) =>
        JwtCommand.Sign(key, "arrakis", CommunitiesSetup.AdminAudience, "operator", "enterprise", "cheap", ["cheap"], TimeSpan.FromMinutes(5), null,
            new Dictionary<string, object> { ["role"] = CommunitiesSetup.OperatorRole }, DateTimeOffset.UtcNow);

    /// <summary>
    /// The exact command that runs <c>loa seed</c> in the cluster: a one-off task of the migration task definition, whose
    /// container runs the loa image with the services' connection strings (deploy/terraform/ecs.tf), with its command
    /// replaced by <c>seed</c>. The network comes from the Terraform outputs, as the deploy pipeline's migration does.
    /// </summary>
    public static string EcsCommand(string cluster, string? taskDefinition)
    {
        const string Outputs = "terraform -chdir=deploy/terraform output";
        return $"aws ecs run-task --cluster {cluster} --launch-type FARGATE --task-definition {taskDefinition ?? cluster + "-migrate"} "
            + $"--network-configuration \"awsvpcConfiguration={{subnets=[$({Outputs} -json private_subnets | jq -r 'join(\",\")')],"
            + $"securityGroups=[$({Outputs} -raw services_security_group)],assignPublicIp=DISABLED}}\" "
            + """--overrides '{"containerOverrides":[{"name":"migrate","command":["seed"]}]}'""";
    }

    /// <summary>freeside's database, migrated; null, with the error on stderr, when <c>--db-url</c> is not a PostgreSQL connection string or URL.</summary>
    static async Task<Database?> OpenAsync(ParseResult parse)
    {
        var config = CliContext.Configuration(parse.GetValue(CliContext.DataDir));
        if (parse.GetValue(DbUrl) is { Length: > 0 } url)
        {
            string connectionString;
            try
            {
                connectionString = PostgresUrl.ToNpgsql(url);
                _ = new Npgsql.NpgsqlConnectionStringBuilder(connectionString);
            }
            catch (Exception ex) when (ex is FormatException or ArgumentException)
            {
                Console.Error.WriteLine($"error: --db-url is not a PostgreSQL connection string or postgres:// URL: {ex.Message}");
                return null;
            }

            config = new ConfigurationBuilder().AddConfiguration(config)
                .AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionStrings:Freeside"] = connectionString }).Build();
        }

        return await CliContext.OpenMigratedAsync(config, "freeside", typeof(Arrakis.Freeside.FreesideService).Assembly);
    }

    static void Print(IEnumerable<string> lines)
    {
        foreach (var line in lines)
        {
            Console.WriteLine(line);
        }
    }
}
