using System.Security.Cryptography;
using System.Text.Json;
using Arrakis.Cli.Gate;

namespace Arrakis.Cli.Tests.Gate;

internal sealed record GateRun(int ExitCode, string Console, string Json, IReadOnlyList<GateRecord> Records)
{
    public JsonElement Document => JsonDocument.Parse(Json).RootElement;

    public GateRecord Single(string phase) => Assert.Single(Records, r => r.Phase == phase);

    public string[] ConsoleLines => Console.Split('\n').Select(l => l.TrimEnd('\r')).ToArray();

    /// <summary>The record as it appears in the JSON document on stderr.</summary>
    public JsonElement JsonResult(string name) =>
        Assert.Single(Document.GetProperty("results").EnumerateArray(), r => r.GetProperty("name").GetString() == name);
}

/// <summary>Starts a <see cref="FakeDeployment"/>, runs the gate against it with the sleeps shrunk, and captures stdout and stderr.</summary>
internal sealed class GateHarness : IAsyncDisposable
{
    GateHarness(FakeDeployment fake, ECDsa key, string keyPath)
    {
        Fake = fake;
        Key = key;
        KeyPath = keyPath;
    }

    public FakeDeployment Fake { get; }

    public ECDsa Key { get; }

    public string KeyPath { get; }

    public static GateTimings FastTimings => new()
    {
        RetryDelay = TimeSpan.FromMilliseconds(10),
        AutopoieticWait = TimeSpan.Zero,
        AutopoieticExtraWait = TimeSpan.Zero,
        HealthTimeout = TimeSpan.FromSeconds(5),
    };

    public static async Task<GateHarness> StartAsync(FakeBehaviour? behaviour = null)
    {
        var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var path = Path.Combine(TestStorage.TempDir(), "staging.pem");
        await File.WriteAllTextAsync(path, key.ExportPkcs8PrivateKeyPem() + "\n");
        return new GateHarness(await FakeDeployment.StartAsync(behaviour ?? new FakeBehaviour(), key), key, path);
    }

    /// <summary>Key, community, chaos and JSON on, like the CI run; <paramref name="change"/> adjusts the settings.</summary>
    public GateSettings Settings(Func<GateSettings, GateSettings>? change = null)
    {
        var settings = new GateSettings
        {
            FreesideUrl = Fake.Url,
            DixieUrl = Fake.Url,
            TestKeyPath = KeyPath,
            CommunityId = "test-community-staging-001",
            Chaos = true,
            Json = true,
        };
        return change is null ? settings : change(settings);
    }

    public Task<GateRun> RunAsync(GateSettings settings, GateTimings? timings = null, IGateSeeder? seeder = null, IX402Payer? payer = null) =>
        RunGateAsync(settings, timings, seeder, payer);

    /// <summary>Runs the gate in-process against whatever <paramref name="settings"/> point at.</summary>
    public static async Task<GateRun> RunGateAsync(GateSettings settings, GateTimings? timings = null, IGateSeeder? seeder = null, IX402Payer? payer = null)
    {
        using var client = GateHttp.CreateClient();
        var console = new StringWriter();
        var json = new StringWriter();
        var report = new GateReport(console, terminal: false);
        var runner = new GateRunner(settings, timings ?? FastTimings, new GateHttp(client), report,
            seeder ?? new CommandGateSeeder(null), payer ?? new JsonRpcX402Payer(client));
        var exit = await runner.RunAsync(json, TestContext.Current.CancellationToken);
        return new GateRun(exit, console.ToString(), json.ToString(), report.Records);
    }

    public async ValueTask DisposeAsync()
    {
        await Fake.DisposeAsync();
        Key.Dispose();
    }
}
