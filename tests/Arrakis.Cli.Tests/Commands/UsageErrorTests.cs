namespace Arrakis.Cli.Tests.Commands;

public sealed class UsageErrorTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("loa-usage-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static async Task<(int Exit, string Stdout, string Stderr)> LoaAsync(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var exit = await LoaProgram.RunAsync(args, output, error, TestContext.Current.CancellationToken);
        return (exit, output.ToString(), error.ToString());
    }

    /// <summary>
    /// A mistyped command line exited 1, the code each command uses for a failure (for <c>audit</c>: an invariant broke),
    /// while the commands' own checks of a value (<c>keys --service</c>, <c>seed --ecs-exec</c> without <c>--cluster</c>,
    /// <c>balance --to</c>) exit 2. Every usage error is now 2, with the error on stderr.
    /// </summary>
    [Theory]
    [InlineData("--bogus", "up", "--bogus")]
    [InlineData("--bogus", "seed", "--bogus")]
    [InlineData("--bogus", "audit", "--bogus")]
    [InlineData("--bogus", "migrate", "--bogus")]
    [InlineData("--bogus", "keys", "list", "--bogus")]
    [InlineData("Required command", "keys")]
    [InlineData("soon", "keys", "rotate", "--propagation-seconds", "soon")]
    [InlineData("--to", "balance", "--listen", "http://127.0.0.1:3100")]
    [InlineData("--bogus", "jwt", "sign", "--bogus")]
    [InlineData("gold", "jwt", "sign", "--key", "k.pem", "--access-level", "gold")]
    [InlineData("bogus", "bogus")]
    public async Task A_usage_error_is_exit_2_with_the_error_on_stderr(string named, params string[] args)
    {
        var (exit, _, stderr) = await LoaAsync(args);

        Assert.True(exit == 2, $"loa {string.Join(' ', args)}: exit {exit}\n{stderr}");
        Assert.Contains(named, stderr, StringComparison.Ordinal);
    }

    /// <summary>
    /// Values the commands check themselves. A malformed <c>--db-url</c> or <c>--freeside-url</c> ended loa with an
    /// unhandled exception's stack trace (exit 134), and <c>jwt sign</c> refused <c>--ttl 0</c> and a <c>--claim</c>
    /// without '=' with exit 1, the code of a failure. Each is now a usage error: exit 2, one line naming the option.
    /// </summary>
    [Theory]
    [InlineData("--ttl", "jwt", "sign", "--key", "{pem}", "--ttl", "0")]
    [InlineData("--claim", "jwt", "sign", "--key", "{pem}", "--claim", "role")]
    [InlineData("--db-url", "audit", "--db-url", "nonsense=1")]
    [InlineData("--db-url", "audit", "--db-url", "postgres://u:s3cret@db:notaport/x")]
    [InlineData("--db-url", "seed", "--db-url", "Host=db;Colour=blue")]
    [InlineData("--freeside-url", "seed", "--freeside-url", "localhost-3000", "--key", "{pem}")]
    public async Task A_malformed_value_a_command_checks_is_exit_2_with_one_line_naming_it(string named, params string[] args)
    {
        var pem = await TestPemAsync();
        var (exit, stdout, stderr) = await LoaProcess.RunAsync([.. args.Select(a => a == "{pem}" ? pem : a)]);

        Assert.True(exit == 2, $"loa {string.Join(' ', args)}: exit {exit}\n{stdout}{stderr}");
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains(named, line, StringComparison.Ordinal);
        Assert.DoesNotContain("s3cret", stderr, StringComparison.Ordinal);
    }

    /// <summary>
    /// A <c>ConnectionStrings__Freeside</c> Npgsql cannot read is a setting to fix, as it is for the services (which
    /// refuse it at start-up): one line naming the setting and exit 1, not a stack trace. So is a <c>seed --key</c> that
    /// holds no P-256 key.
    /// </summary>
    [Theory]
    [InlineData("ConnectionStrings:Freeside", "audit")]
    [InlineData("ConnectionStrings:Freeside", "seed")]
    [InlineData("ConnectionStrings:Freeside", "migrate")]
    [InlineData("ConnectionStrings:Freeside", "keys", "list")]
    [InlineData("--key", "seed", "--freeside-url", "http://127.0.0.1:9", "--key", "{not-a-pem}")]
    public async Task A_setting_or_file_loa_cannot_read_is_exit_1_with_one_line_naming_it(string named, params string[] args)
    {
        var notPem = Path.Combine(_dir, "not-a-key.pem");
        await File.WriteAllTextAsync(notPem, "hello\n", TestContext.Current.CancellationToken);
        var env = new Dictionary<string, string> { ["ConnectionStrings__Freeside"] = "Host=db;Colour=blue" };

        var (exit, stdout, stderr) = await LoaProcess.RunAsync(env, [.. args.Select(a => a == "{not-a-pem}" ? notPem : a)]);

        Assert.True(exit == 1, $"loa {string.Join(' ', args)}: exit {exit}\n{stdout}{stderr}");
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains(named, line, StringComparison.Ordinal);
    }

    async Task<string> TestPemAsync()
    {
        var path = Path.Combine(_dir, "test.pem");
        using var key = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        await File.WriteAllTextAsync(path, key.ExportPkcs8PrivateKeyPem(), TestContext.Current.CancellationToken);
        return path;
    }

    /// <summary>The launch gate's contract says 1 for an unknown option, and deploy's 2 means READY_DEGRADED: both keep 1.</summary>
    [Theory]
    [InlineData("gate")]
    [InlineData("deploy")]
    public async Task Gate_and_deploy_keep_exit_1_for_an_unknown_option(string command)
    {
        var (exit, _, stderr) = await LoaAsync(command, "--bogus");

        Assert.Equal(1, exit);
        Assert.Contains("--bogus", stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("up")]
    [InlineData("seed")]
    [InlineData("keys")]
    [InlineData("migrate")]
    [InlineData("balance")]
    [InlineData("deploy")]
    public async Task Help_is_exit_0_on_stdout(string command)
    {
        var (exit, stdout, stderr) = await LoaAsync(command, "--help");

        Assert.True(exit == 0, stderr);
        Assert.Contains("Usage:", stdout, StringComparison.Ordinal);
        Assert.Equal("", stderr);
    }
}
