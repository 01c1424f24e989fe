namespace Arrakis.Cli.Tests.Commands;

public sealed class UsageErrorTests
{
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
    [InlineData("bogus", "bogus")]
    public async Task A_usage_error_is_exit_2_with_the_error_on_stderr(string named, params string[] args)
    {
        var (exit, _, stderr) = await LoaAsync(args);

        Assert.True(exit == 2, $"loa {string.Join(' ', args)}: exit {exit}\n{stderr}");
        Assert.Contains(named, stderr, StringComparison.Ordinal);
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
