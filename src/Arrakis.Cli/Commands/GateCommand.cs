using System.CommandLine;
using Arrakis.Cli.Gate;

namespace Arrakis.Cli.Commands;

/// <summary>
/// <c>loa gate</c>: the launch gate (freeside-launch-gate.md §2) against any deployment. Exit 0 = PASS, 1 = a P0 failed,
/// 2 = only P1 failures. With <c>--json</c> the results document goes to stderr after the summary.
/// </summary>
internal static class GateCommand
{
    public static Command Create()
    {
        var env = GateSettings.FromEnvironment(Environment.GetEnvironmentVariable);
        var testKey = new Option<string?>("--test-key") { Description = "ES256 P-256 PEM private key (PKCS#8 or SEC1) for the test JWTs, e.g. .loa/staging.pem", HelpName = "path" };
        var community = new Option<string?>("--community-id") { Description = "Community id for the budget checks (e.g. test-community-staging-001)", HelpName = "id" };
        var freeside = new Option<string>("--freeside-url") { Description = "Freeside base URL [env FREESIDE_URL]", HelpName = "url", DefaultValueFactory = _ => env.FreesideUrl };
        var dixie = new Option<string>("--dixie-url") { Description = "Dixie base URL [env DIXIE_URL]", HelpName = "url", DefaultValueFactory = _ => env.DixieUrl };
        var json = new Option<bool>("--json") { Description = "After the summary, write the results as one JSON document to stderr" };
        var retries = new Option<int>("--retries") { Description = "Total attempts for the health and JWKS checks (2 s apart; a pass after a retry is tagged FLAKE)", HelpName = "n", DefaultValueFactory = _ => 1 };
        var autoSeed = new Option<bool>("--auto-seed") { Description = "Seed the test data first ('loa seed'); a failure only warns" };
        var chaos = new Option<bool>("--chaos") { Description = "Run the chaos scenarios after the budget phase (needs --test-key and --community-id)" };
        var command = new Command("gate", "Run the staging launch gate (smoke phases P0-1..P1-8) against freeside and dixie. Env: FREESIDE_URL, DIXIE_URL, TEST_NFT_CONTRACT, TEST_NFT_TOKEN_ID, SEPOLIA_RPC_URL, STAGING_WALLET_KEY.")
        {
            testKey, community, freeside, dixie, json, retries, autoSeed, chaos,
        };
        command.SetAction(async (parse, ct) =>
        {
            var settings = env with
            {
                TestKeyPath = GateSettings.NonEmpty(parse.GetValue(testKey)),
                CommunityId = GateSettings.NonEmpty(parse.GetValue(community)),
                FreesideUrl = parse.GetValue(freeside)!,
                DixieUrl = parse.GetValue(dixie)!,
                Json = parse.GetValue(json),
                Retries = parse.GetValue(retries),
                AutoSeed = parse.GetValue(autoSeed),
                Chaos = parse.GetValue(chaos),
            };
            if (settings.Retries < 1)
            {
                Console.Error.WriteLine("error: --retries must be 1 or more (it is the total number of attempts)");
                return 1;
            }

            if (settings.TestKeyPath is { } key && !File.Exists(key))
            {
                Console.Error.WriteLine($"ERROR: Test key not found: {key}");
                return 1;
            }

            using var client = GateHttp.CreateClient();
            var report = new GateReport(Console.Out, terminal: !Console.IsOutputRedirected);
            var runner = new GateRunner(settings, new GateTimings(), new GateHttp(client), report,
                new CommandGateSeeder(parse.RootCommandResult.Command), new JsonRpcX402Payer(client));
            return await runner.RunAsync(Console.Error, ct);
        });
        return command;
    }
}
