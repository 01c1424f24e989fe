using System.CommandLine;

namespace Arrakis.Cli.Gate;

internal sealed record GateSeedResult(bool Succeeded, string Output);

/// <summary>Provisions the gate's test data (<c>--auto-seed</c>); prints <c>COMMUNITY_ID=…</c> (and optionally <c>TEST_KEY_PATH=…</c>) lines.</summary>
internal interface IGateSeeder
{
    Task<GateSeedResult> SeedAsync(GateSettings settings, CancellationToken ct);
}

/// <summary>
/// Runs <c>loa seed --freeside-url URL [--key PEM]</c> in-process when this build registers a <c>seed</c> command,
/// capturing what it prints; otherwise reports failure so the gate only warns, as the original did.
/// </summary>
internal sealed class CommandGateSeeder(Command? root) : IGateSeeder
{
    static readonly SemaphoreSlim ConsoleLock = new(1, 1);

    public async Task<GateSeedResult> SeedAsync(GateSettings settings, CancellationToken ct)
    {
        var seed = root?.Subcommands.FirstOrDefault(c => c.Name == "seed");
        if (root is null || seed is null)
        {
            return new GateSeedResult(false, "'loa seed' is not available in this build");
        }

        // Pass only what this build's seed command understands, so an older or newer seeder still runs.
        var args = new List<string> { "seed" };
        if (HasOption(seed, "--freeside-url"))
        {
            args.AddRange(["--freeside-url", settings.FreesideUrl]);
        }

        if (settings.TestKeyPath is { } key && HasOption(seed, "--key"))
        {
            args.AddRange(["--key", key]);
        }

        // The seed command may write straight to Console; capture both streams so --json keeps stderr clean.
        await ConsoleLock.WaitAsync(ct);
        var (stdout, stderr) = (Console.Out, Console.Error);
        using var capture = new StringWriter();
        try
        {
            Console.SetOut(capture);
            Console.SetError(capture);
            var exit = await root.Parse(args).InvokeAsync(new InvocationConfiguration { Output = capture, Error = capture }, ct);
            return new GateSeedResult(exit == 0, capture.ToString());
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            return new GateSeedResult(false, capture + ex.Message);
        }
        finally
        {
            Console.SetOut(stdout);
            Console.SetError(stderr);
            ConsoleLock.Release();
        }
    }

    static bool HasOption(Command command, string name) =>
        command.Options.Any(o => o.Name == name || o.Aliases.Contains(name));
}
