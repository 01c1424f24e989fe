using System.CommandLine;
using Arrakis.Cli.Commands;
using Arrakis.Cli.Gate;

namespace Arrakis.Cli.Tests.Gate;

public sealed class GateCommandTests
{
    static RootCommand Root() => new("loa") { GateCommand.Create() };

    [Fact]
    public async Task Help_exits_0_and_lists_every_flag()
    {
        var output = new StringWriter();
        var exit = await Root().Parse(["gate", "--help"]).InvokeAsync(new InvocationConfiguration { Output = output, Error = output }, TestContext.Current.CancellationToken);

        Assert.Equal(0, exit);
        foreach (var flag in new[] { "--test-key", "--community-id", "--freeside-url", "--dixie-url", "--retries", "--auto-seed", "--chaos", "--json" })
        {
            Assert.Contains(flag, output.ToString(), StringComparison.Ordinal);
        }

        // The smoke script's defaults (freeside-launch-gate.md §1): the checklist's commands name no URL and mean staging.
        Assert.Contains("https://staging.api.arrakis.community", output.ToString(), StringComparison.Ordinal);
        Assert.Contains("https://dixie.staging.arrakis.community", output.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_unknown_option_prints_usage_and_exits_1()
    {
        var output = new StringWriter();
        var exit = await Root().Parse(["gate", "--bogus"]).InvokeAsync(new InvocationConfiguration { Output = output, Error = output }, TestContext.Current.CancellationToken);

        Assert.Equal(1, exit);
        Assert.Contains("--bogus", output.ToString(), StringComparison.Ordinal);
        Assert.Contains("Usage:", output.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void Environment_variables_fill_the_settings()
    {
        var env = new Dictionary<string, string>
        {
            ["FREESIDE_URL"] = "https://f.example",
            ["DIXIE_URL"] = "https://d.example",
            ["TEST_NFT_CONTRACT"] = "0xabc",
            ["TEST_NFT_TOKEN_ID"] = "7",
            ["SEPOLIA_RPC_URL"] = "https://rpc.example",
            ["STAGING_WALLET_KEY"] = "0x01",
        };
        var settings = GateSettings.FromEnvironment(name => env.GetValueOrDefault(name));

        Assert.Equal(("https://f.example", "https://d.example", "0xabc", "7", "https://rpc.example", "0x01"),
            (settings.FreesideUrl, settings.DixieUrl, settings.TestNftContract, settings.TestNftTokenId, settings.SepoliaRpcUrl, settings.StagingWalletKey));
        var defaults = GateSettings.FromEnvironment(_ => null);
        Assert.Equal(("https://staging.api.arrakis.community", "https://dixie.staging.arrakis.community", 1), (defaults.FreesideUrl, defaults.DixieUrl, defaults.Retries));
        Assert.Equal(("https://staging.api.arrakis.community", "https://dixie.staging.arrakis.community"),
            (GateSettings.FromEnvironment(_ => "").FreesideUrl, GateSettings.FromEnvironment(_ => "").DixieUrl));
    }

    [Fact]
    public async Task The_default_seeder_warns_when_no_seed_command_is_registered()
    {
        var result = await new CommandGateSeeder(Root()).SeedAsync(new GateSettings(), TestContext.Current.CancellationToken);
        Assert.False(result.Succeeded);
        Assert.Contains("loa seed", result.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_default_seeder_runs_a_registered_seed_command_and_captures_its_output()
    {
        var url = new Option<string>("--freeside-url");
        var key = new Option<string>("--key");
        var seed = new Command("seed") { url, key };
        seed.SetAction(parse =>
        {
            Console.WriteLine($"seeding {parse.GetValue(url)} with {parse.GetValue(key)}");
            Console.WriteLine("COMMUNITY_ID=test-community-staging-001");
            return 0;
        });
        var root = new RootCommand("loa") { seed };

        var result = await new CommandGateSeeder(root).SeedAsync(new GateSettings { FreesideUrl = "http://f", TestKeyPath = "/k.pem" }, TestContext.Current.CancellationToken);

        Assert.True(result.Succeeded, result.Output);
        Assert.Contains("seeding http://f with /k.pem", result.Output, StringComparison.Ordinal);
        Assert.Contains("COMMUNITY_ID=test-community-staging-001", result.Output, StringComparison.Ordinal);
    }
}
