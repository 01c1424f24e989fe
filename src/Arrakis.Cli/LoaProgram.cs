using System.CommandLine;
using System.Data.Common;
using System.Net.Sockets;
using Arrakis.Cli.Commands;

namespace Arrakis.Cli;

/// <summary>The loa command line: its commands, and what an operator sees when one fails on its surroundings.</summary>
internal static class LoaProgram
{
    public static RootCommand Root() => new("loa: run, seed, gate and operate the Arrakis agent platform (freeside, finn, dixie).")
    {
        UpCommand.Create(),
        MigrateCommand.Create(),
        KeysCommand.Create(),
        JwtCommand.Create(),
        GateCommand.Create(),
        BalanceCommand.Create(),
        SeedCommand.Create(),
        SeedCommand.CreateAudit(),
        DeployCommand.Create(),
    };

    /// <summary>
    /// Runs one command. A failure of the command's surroundings (a database or service it cannot reach, a file it cannot
    /// read) prints one line naming it and exits 1, instead of an unhandled exception's stack trace; any other exception
    /// is a defect of loa and keeps its stack trace.
    /// </summary>
    public static async Task<int> RunAsync(string[] args, TextWriter? output = null, TextWriter? error = null, CancellationToken ct = default)
    {
        var configuration = new InvocationConfiguration { EnableDefaultExceptionHandler = false };
        if (output is not null)
        {
            configuration.Output = output;
        }

        error ??= Console.Error;
        configuration.Error = error;
        try
        {
            var parse = Root().Parse(args);
            var exit = await parse.InvokeAsync(configuration, ct);
            return parse.Errors.Count > 0 && UsageErrorsExit2(parse.CommandResult.Command) ? 2 : exit;
        }
        catch (Exception ex) when (Describe(ex) is { } message)
        {
            await error.WriteLineAsync($"loa: {message}");
            return ex is OperationCanceledException ? 130 : 1;
        }
    }

    /// <summary>
    /// An unknown option, a missing argument or a value that does not parse is a usage error: exit 2, as each command's
    /// own checks of its values answer, so that a script can tell a typo from a failure (for <c>audit</c>, exit 1 means
    /// an invariant broke). Not for <c>gate</c>, whose contract says 1 (freeside-launch-gate.md §2), nor <c>deploy</c>,
    /// whose 2 means READY_DEGRADED and which exits 1 on its pipeline's own usage errors.
    /// </summary>
    static bool UsageErrorsExit2(Command command) => command.Name is not ("gate" or "deploy");

    /// <summary>A one-line account of an environmental failure, or null for anything else.</summary>
    internal static string? Describe(Exception ex)
    {
        if (ex is AggregateException { InnerExceptions.Count: 1 } aggregate)
        {
            return Describe(aggregate.InnerException!);
        }

        static string Chain(Exception e) => Arrakis.Shared.Hosting.ServiceMain.Chain(e);

        return ex switch
        {
            OperationCanceledException => "cancelled.",
            DbException db => "database error: " + Chain(db),
            HttpRequestException http => "HTTP request failed: " + Chain(http),
            SocketException socket => "network error: " + socket.Message,
            TimeoutException timeout => "timed out: " + Chain(timeout),
            UnauthorizedAccessException or IOException => Chain(ex),
            Arrakis.Shared.Tokens.KeyringMasterKeyException key => key.Message,
            Arrakis.Shared.Storage.ConnectionStringException connection => connection.Message,
            Arrakis.Freeside.Seeding.SeedFailedException seed => seed.Message,
            Arrakis.Shared.Hosting.ServiceStartException start => $"{start.Service} did not start: {Chain(start.InnerException!)}",
            _ => null,
        };
    }
}
