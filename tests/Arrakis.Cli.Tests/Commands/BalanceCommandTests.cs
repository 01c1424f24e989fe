using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Arrakis.Cli.Tests.Commands;

public sealed class BalanceCommandTests
{
    /// <summary>Runs <c>loa balance</c> for at most <paramref name="seconds"/>; a proxy still running then is stopped.</summary>
    static async Task<(int? Exit, string Stdout, string Stderr)> BalanceAsync(int seconds, params string[] args)
    {
        using var process = Process.Start(LoaProcess.StartInfo(["balance", .. args]))!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(seconds));
        int? exit;
        try
        {
            await process.WaitForExitAsync(timeout.Token);
            exit = process.ExitCode;
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync(TestContext.Current.CancellationToken);
            exit = null;
        }

        return (exit, await stdout, await stderr);
    }

    /// <summary>
    /// A --listen that is not an http URL with a port (a bare port, a port past 65535, https, which the proxy's host has
    /// no certificate for) crashed loa with an unhandled exception (exit 134, a stack trace); a --to of another scheme
    /// started a proxy that could never forward. Each is now exit 2 with one line naming the option.
    /// </summary>
    [Theory]
    [InlineData("--listen", "{port}", "http://127.0.0.1:1")]
    [InlineData("--listen", "http://127.0.0.1:99999", "http://127.0.0.1:1")]
    [InlineData("--listen", "https://127.0.0.1:{port}", "http://127.0.0.1:1")]
    [InlineData("--to", "http://127.0.0.1:{port}", "ftp://127.0.0.1:1")]
    public async Task A_bad_listen_or_replica_address_is_exit_2_naming_the_option_not_a_crash(string option, string listen, string to)
    {
        var (exit, stdout, stderr) = await BalanceAsync(20, "--listen", listen.Replace("{port}", TestStorage.FreePort().ToString()), "--to", to);

        Assert.True(exit == 2, $"exit {exit?.ToString() ?? "none (still running)"}\n{stdout}\n{stderr}");
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("error: " + option + " needs", line, StringComparison.Ordinal);
        Assert.DoesNotContain("balancing", stdout, StringComparison.Ordinal);
    }

    /// <summary>
    /// It printed "balancing …" before it tried to listen, so a port in use answered with that success line and the
    /// host's stack trace on stdout; now the line comes only once it listens, and the failure is one line on stderr.
    /// </summary>
    [Fact]
    public async Task A_listen_port_in_use_is_one_line_on_stderr_and_no_success_line()
    {
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        var port = ((IPEndPoint)taken.LocalEndpoint).Port;

        var (exit, stdout, stderr) = await BalanceAsync(30, "--listen", $"http://127.0.0.1:{port}", "--to", "http://127.0.0.1:1");

        Assert.True(exit == 1, $"exit {exit}\n{stdout}\n{stderr}");
        Assert.DoesNotContain("balancing", stdout, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", stdout + stderr, StringComparison.Ordinal);
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains($"127.0.0.1:{port}", line, StringComparison.Ordinal);

        // The same command on a free port listens, and says so.
        var free = TestStorage.FreePort();
        var (running, started, _) = await BalanceAsync(10, "--listen", $"http://127.0.0.1:{free}", "--to", "http://127.0.0.1:1");
        Assert.Null(running);
        Assert.Contains($"balancing http://127.0.0.1:{free} -> http://127.0.0.1:1", started, StringComparison.Ordinal);
    }
}
