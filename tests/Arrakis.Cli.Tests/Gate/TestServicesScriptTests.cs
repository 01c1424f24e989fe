using System.Net;
using System.Net.Sockets;

namespace Arrakis.Cli.Tests.Gate;

/// <summary>
/// scripts/test-services.sh run for real, on ports and a data directory of each test's own (never the shared test
/// servers): every server a test starts is stopped again, by the commands the script prints or, failing that, directly.
/// </summary>
public sealed class TestServicesScriptTests
{
    sealed record Servers(int PgPort, int RedisPort, string PgData) : IAsyncDisposable
    {
        public static Servers Fresh() => new(TestStorage.FreePort(), TestStorage.FreePort(), Path.Combine(TestStorage.TempDir(), "pg"));

        public Dictionary<string, string> Env => new()
        {
            ["ARRAKIS_PG_PORT"] = PgPort.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["ARRAKIS_REDIS_PORT"] = RedisPort.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["ARRAKIS_PGDATA"] = PgData,
        };

        public Task<(int Exit, string Stdout, string Stderr)> RunScriptAsync() => ScriptTests.RunAsync("bash", ["scripts/test-services.sh"], Env, timeoutSeconds: 120);

        // Whatever the script left running, stopped as the user that owns it; pg_ctl refuses to run as root.
        public async ValueTask DisposeAsync()
        {
            await ScriptTests.RunAsync("bash", ["-c", """
                pg="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
                if [ -f "$1/postmaster.pid" ]; then
                  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$pg/pg_ctl" -D "$1" -m immediate -w stop; else "$pg/pg_ctl" -D "$1" -m immediate -w stop; fi
                fi
                redis-cli -p "$2" ping >/dev/null 2>&1 && redis-cli -p "$2" shutdown nosave
                rm -f "/tmp/arrakis-redis-$2.log"
                exit 0
                """, "stop", PgData, RedisPort.ToString(System.Globalization.CultureInfo.InvariantCulture)], timeoutSeconds: 60);
        }
    }

    static bool Listening(int port)
    {
        try
        {
            using var client = new TcpClient();
            client.Connect(IPAddress.Loopback, port);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    /// <summary>
    /// The script printed ARRAKIS_PG_STOP as <c>pg_ctl -D DIR</c>: no operation, and pg_ctl refuses to run as root, the
    /// user that installs and starts the servers on a fresh Debian. Nothing stopped the Redis it started.
    /// </summary>
    [Fact]
    public async Task The_servers_it_starts_are_kept_on_a_rerun_and_stopped_by_the_commands_it_prints()
    {
        await using var servers = Servers.Fresh();

        var first = await servers.RunScriptAsync();
        var second = await servers.RunScriptAsync();

        Assert.True(first.Exit == 0, first.Stdout + first.Stderr);
        Assert.Contains($"export ARRAKIS_TEST_PG='Host=127.0.0.1;Port={servers.PgPort};Username=postgres;", first.Stdout, StringComparison.Ordinal);
        Assert.Contains($"export ARRAKIS_TEST_REDIS='127.0.0.1:{servers.RedisPort}'", first.Stdout, StringComparison.Ordinal);
        Assert.True(Listening(servers.PgPort) && Listening(servers.RedisPort));
        Assert.True(second.Exit == 0, second.Stdout + second.Stderr);
        Assert.Equal(first.Stdout, second.Stdout);
        Assert.True(File.Exists($"/tmp/arrakis-redis-{servers.RedisPort}.log"), "Redis logs to a file of its own port");

        var stop = await ScriptTests.RunAsync("bash", ["-c", "eval \"$1\" && $ARRAKIS_PG_STOP && $ARRAKIS_REDIS_STOP", "stop", first.Stdout], timeoutSeconds: 60);

        Assert.True(stop.Exit == 0, stop.Stdout + stop.Stderr);
        Assert.False(File.Exists(Path.Combine(servers.PgData, "postmaster.pid")), "PostgreSQL still runs");
        Assert.False(Listening(servers.PgPort), "PostgreSQL still listens");
        Assert.False(Listening(servers.RedisPort), "Redis still listens");
    }

    /// <summary>
    /// redis-server --daemonize forks before it binds, so it exits 0 whether or not Redis starts: with its port taken,
    /// the script waited 5 s, exited 0 and printed an ARRAKIS_TEST_REDIS that nothing answered.
    /// </summary>
    [Theory]
    [InlineData("redis", "Redis did not start on 127.0.0.1:{0} (is the port taken? set ARRAKIS_REDIS_PORT)")]
    [InlineData("postgres", "PostgreSQL did not start on 127.0.0.1:{0} (is the port taken? set ARRAKIS_PG_PORT)")]
    public async Task A_server_that_cannot_take_its_port_fails_the_script_with_exit_1_and_its_log(string server, string message)
    {
        await using var servers = Servers.Fresh();
        var port = server == "redis" ? servers.RedisPort : servers.PgPort;
        // Something else on the port: it accepts and hangs up, as a service speaking another protocol would.
        using var squatter = new TcpListener(IPAddress.Loopback, port);
        squatter.Start();
        using var stopSquatting = new CancellationTokenSource();
        var accepting = Task.Run(async () =>
        {
            while (!stopSquatting.IsCancellationRequested)
            {
                using var connection = await squatter.AcceptTcpClientAsync(stopSquatting.Token);
            }
        }, CancellationToken.None);

        var run = await servers.RunScriptAsync();
        await stopSquatting.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => accepting);

        Assert.True(run.Exit == 1, $"exit {run.Exit}\n{run.Stdout}\n{run.Stderr}");
        Assert.DoesNotContain("export ARRAKIS_TEST_REDIS", run.Stdout, StringComparison.Ordinal);
        Assert.Contains(string.Format(System.Globalization.CultureInfo.InvariantCulture, message, port), run.Stderr, StringComparison.Ordinal);
        Assert.Contains("Address already in use", run.Stderr, StringComparison.Ordinal); // the server's own log line
    }
}
