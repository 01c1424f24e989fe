using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using Arrakis.Shared.Caching;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;

namespace Arrakis.Cli.Tests.Gate;

/// <summary>The operator scripts run for real: bash and node, from the repository's scripts/ folder.</summary>
public sealed class ScriptTests
{
    internal static string RepoRoot
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, "Arrakis.slnx")))
                {
                    return dir.FullName;
                }
            }

            throw new InvalidOperationException("Arrakis.slnx not found above " + AppContext.BaseDirectory);
        }
    }

    internal static async Task<(int Exit, string Stdout, string Stderr)> RunAsync(string file, IEnumerable<string> args, IDictionary<string, string>? env = null, int timeoutSeconds = 300)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = RepoRoot };
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        foreach (var (k, v) in env ?? new Dictionary<string, string>())
        {
            start.Environment[k] = v;
        }

        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(timeoutSeconds));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw;
        }

        return (process.ExitCode, await stdout, await stderr);
    }

    [Fact]
    public async Task Deploy_all_dry_run_prints_the_whole_plan_and_exits_0()
    {
        var (exit, stdout, stderr) = await RunAsync("bash", ["scripts/staging-deploy-all.sh", "--dry-run", "--branch", "HEAD"]);

        Assert.True(exit == 0, stderr + stdout);
        var freeside = stdout.IndexOf("--service freeside --task-definition arrakis-staging-freeside", StringComparison.Ordinal);
        var finn = stdout.IndexOf("--service finn --task-definition arrakis-staging-finn", StringComparison.Ordinal);
        var dixie = stdout.IndexOf("--service dixie --task-definition arrakis-staging-dixie", StringComparison.Ordinal);
        Assert.True(freeside > 0 && finn > freeside && dixie > finn, "deploy order freeside → finn → dixie");
        Assert.Contains("[dry-run] terraform -chdir=deploy/terraform plan -input=false -detailed-exitcode", stdout, StringComparison.Ordinal);
        Assert.Contains("[dry-run] aws ecs run-task", stdout, StringComparison.Ordinal);
        Assert.Contains("staging-smoke.sh --freeside-url https://staging.api.arrakis.community --dixie-url https://dixie.staging.arrakis.community --retries 3 --auto-seed --json", stdout, StringComparison.Ordinal);
        foreach (var goal in Enumerable.Range(1, 9))
        {
            Assert.Contains($"G-{goal} ", stdout, StringComparison.Ordinal);
        }

        Assert.Contains("READY_DEGRADED", stdout, StringComparison.Ordinal);
        Assert.Contains("Status: DRY_RUN", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Deploy_all_rejects_unknown_options()
    {
        var (exit, _, stderr) = await RunAsync("bash", ["scripts/staging-deploy-all.sh", "--bogus"]);
        Assert.Equal(1, exit);
        Assert.Contains("Unknown option: --bogus", stderr, StringComparison.Ordinal);
    }

    // --help must print the usage and exit 0 without doing anything: test.sh and ci-gate.sh used to ignore it and start
    // the whole suite or the gate runs; test-services.sh, loa-ecs.sh and sign-test-jwt.mjs refused it as a bad argument.
    [Theory]
    [InlineData("bash", "scripts/test.sh")]
    [InlineData("bash", "scripts/ci-gate.sh")]
    [InlineData("bash", "scripts/test-services.sh")]
    [InlineData("bash", "scripts/loa-ecs.sh")]
    [InlineData("node", "scripts/sign-test-jwt.mjs")]
    [InlineData("python3", "scripts/summarize-trx.py")]
    public async Task Scripts_answer_help_with_their_usage_and_exit_0(string runner, string script)
    {
        foreach (var flag in new[] { "--help", "-h" })
        {
            var (exit, stdout, stderr) = await RunAsync(runner, [script, flag], timeoutSeconds: 30);

            Assert.True(exit == 0, $"{script} {flag}: exit {exit}\n{stderr}{stdout}");
            Assert.Contains("Usage:", stdout, StringComparison.Ordinal);
            Assert.Contains(script, stdout, StringComparison.Ordinal);
        }
    }

    // An option a script does not know is refused (exit 2, named on stderr) before it does anything: ci-gate.sh used to
    // ignore it and start the gate runs, and check-emitted-metrics.py read --help as the deploy directory.
    [Theory]
    [InlineData("bash", "scripts/ci-gate.sh", "--bogus", "unknown option '--bogus'")]
    [InlineData("bash", "scripts/ci-gate.sh", "--single-only --multi-only", "one option at most")]
    [InlineData("python3", "scripts/check-emitted-metrics.py", "deploy", "usage: check-emitted-metrics.py")]
    [InlineData("python3", "scripts/summarize-trx.py", "--bogus", "usage: summarize-trx.py")]
    public async Task Scripts_refuse_arguments_they_do_not_take(string runner, string script, string arguments, string message)
    {
        var (exit, _, stderr) = await RunAsync(runner, [script, .. arguments.Split(' ')], timeoutSeconds: 30);

        Assert.True(exit == 2, $"{script} {arguments}: exit {exit}\n{stderr}");
        Assert.Contains(message, stderr, StringComparison.Ordinal);
    }

    // A TRX as VSTest writes it when the test host crashes or the session times out (test.sh sets TestSessionTimeout):
    // the counters hold only the tests that finished, and the abort is an Error RunInfo.
    const string AbortedTrx = """
        <?xml version="1.0" encoding="utf-8"?>
        <TestRun id="0c1d" name="ci" xmlns="http://microsoft.com/schemas/VisualStudio/TeamTest/2010">
          <Results>
            <UnitTestResult testName="Arrakis.X.Passes" duration="00:00:00.0100000" outcome="Passed" />
            <UnitTestResult testName="Arrakis.X.Breaks" duration="00:00:00.0200000" outcome="Failed">
              <Output><ErrorInfo><Message>Assert.Equal() Failure: expected 1, actual 2</Message></ErrorInfo></Output>
            </UnitTestResult>
          </Results>
          <ResultSummary outcome="Failed">
            <Counters total="40" executed="2" passed="1" failed="1" error="0" timeout="0" aborted="0" inconclusive="0" notExecuted="0" />
            <RunInfos>
              <RunInfo computerName="ci" outcome="Error" timestamp="2026-11-29T10:00:00.0000000+00:00">
                <Text>The active test run was aborted. Reason: Test host process crashed : Stack overflow.</Text>
              </RunInfo>
              <RunInfo computerName="ci" outcome="Warning" timestamp="2026-11-29T10:00:00.0000000+00:00">
                <Text>No test matches the given testcase filter</Text>
              </RunInfo>
            </RunInfos>
          </ResultSummary>
        </TestRun>
        """;

    /// <summary>
    /// The closing line of test.sh's log said "1 passed, 1 failed, 0 skipped" for a run whose test host crashed with 38
    /// tests never run; and for a results directory without any TRX, "0 passed, 0 failed, 0 skipped", exit 0.
    /// </summary>
    [Fact]
    public async Task Summarize_trx_names_an_aborted_run_and_refuses_a_directory_without_results()
    {
        var dir = TestStorage.TempDir();
        await File.WriteAllTextAsync(Path.Combine(dir, "cli.trx"), AbortedTrx, TestContext.Current.CancellationToken);
        var empty = TestStorage.TempDir();

        var (exit, stdout, stderr) = await RunAsync("python3", ["scripts/summarize-trx.py", dir], timeoutSeconds: 30);
        var none = await RunAsync("python3", ["scripts/summarize-trx.py", empty], timeoutSeconds: 30);

        Assert.True(exit == 0, stderr);
        var lines = stdout.TrimEnd('\n').Split('\n');
        Assert.Equal("1 passed, 1 failed, 0 skipped, 1 runs aborted", lines[^1]);
        Assert.Contains("FAILED Arrakis.X.Breaks (00:00:00.0200000)\n      Assert.Equal() Failure: expected 1, actual 2", stdout, StringComparison.Ordinal);
        Assert.Contains("ABORTED cli.trx\n      The active test run was aborted. Reason: Test host process crashed : Stack overflow.", stdout, StringComparison.Ordinal);
        Assert.DoesNotContain("No test matches", stdout, StringComparison.Ordinal); // a warning is no abort
        Assert.Equal(1, none.Exit);
        Assert.Empty(none.Stdout);
        Assert.Contains($"no TRX files in {empty}", none.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Check_emitted_metrics_answers_help_with_its_usage()
    {
        var (exit, stdout, _) = await RunAsync("python3", ["scripts/check-emitted-metrics.py", "--help"], timeoutSeconds: 30);

        Assert.Equal(0, exit);
        Assert.Contains("Usage: check-emitted-metrics.py DEPLOY_DIR SCRAPE_FILE", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Sign_test_jwt_output_verifies_with_the_platform_token_verifier()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var pem = Path.Combine(TestStorage.TempDir(), "staging.pem");
        await File.WriteAllTextAsync(pem, key.ExportPkcs8PrivateKeyPem(), TestContext.Current.CancellationToken);

        var (exit, token, stderr) = await RunAsync("node", ["scripts/sign-test-jwt.mjs", pem]);

        Assert.True(exit == 0, stderr);
        Assert.DoesNotContain('\n', token);
        var (x, y) = SigningKey.PublicPoint(key);
        var published = new SigningKey("k1", KeyStatus.Active, x, y, DateTimeOffset.UtcNow, null, DateTimeOffset.UtcNow, null, null, null);
        var meters = new ServiceCollection().AddMetrics().BuildServiceProvider().GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>();
        var verifier = new TokenVerifier(new MemoryReplayCache(TimeProvider.System), TimeProvider.System, NullLogger<TokenVerifier>.Instance, meters);
        var policy = new TokenPolicy("user", new Dictionary<string, IKeySource> { ["arrakis"] = new OneKey(published) }, ["arrakis"], TimeSpan.FromMinutes(15));

        var result = await verifier.VerifyAsync(token, policy, TestContext.Current.CancellationToken);

        Assert.True(result.Succeeded, result.Failure);
        Assert.Equal("test-tenant", result.Token!.GetClaim("tenant_id").Value);
        Assert.False(result.Token.TryGetHeaderValue<string>("kid", out _));
        var claims = GateRunnerTests.Claims(token);
        Assert.Equal(300, claims.GetProperty("exp").GetInt64() - claims.GetProperty("iat").GetInt64());
        Assert.Equal(JsonValueKind.Array, claims.GetProperty("allowed_pools").ValueKind);

        // The same token twice is a replay.
        Assert.False((await verifier.VerifyAsync(token, policy, TestContext.Current.CancellationToken)).Succeeded);
    }

    [Fact]
    public async Task Sign_test_jwt_exits_2_without_an_argument_and_1_on_a_bad_key()
    {
        Assert.Equal(2, (await RunAsync("node", ["scripts/sign-test-jwt.mjs"])).Exit);

        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var sec1 = Path.Combine(TestStorage.TempDir(), "sec1.pem");
        await File.WriteAllTextAsync(sec1, key.ExportECPrivateKeyPem(), TestContext.Current.CancellationToken);
        var (exit, stdout, stderr) = await RunAsync("node", ["scripts/sign-test-jwt.mjs", sec1]);
        Assert.Equal(1, exit);
        Assert.Empty(stdout);
        Assert.StartsWith("JWT signing failed: ", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task No_script_or_deployment_file_mentions_Fly_io()
    {
        var folders = new[] { "scripts", "deploy", "docs" }.Where(d => Directory.Exists(Path.Combine(RepoRoot, d))).ToArray();
        var (exit, stdout, _) = await RunAsync("grep", ["-rnE", @"fl[y]\.io|fl[y]ctl|fl[y] deploy", .. folders, "--include=*.sh", "--include=*.tf", "--include=*.yml", "--include=*.md", "--include=*.mjs"]);

        Assert.Equal(1, exit); // grep: 1 = no match
        Assert.Empty(stdout);
    }

    [Fact]
    public async Task Rotation_and_emergency_revocation_scripts_work_against_a_running_platform()
    {
        await using var platform = await Platform.StartAsync("sqlite");
        var env = new Dictionary<string, string> { ["FREESIDE_URL"] = platform.FreesideUrl, ["DIXIE_URL"] = platform.DixieUrl, ["FINN_URL"] = platform.FinnUrl };
        async Task<string[]> Kids() => JsonDocument.Parse(await new HttpClient().GetStringAsync(platform.FreesideUrl + "/.well-known/jwks.json", TestContext.Current.CancellationToken))
            .RootElement.GetProperty("keys").EnumerateArray().Select(k => k.GetProperty("kid").GetString()!).ToArray();
        var before = await Kids();

        var rotate = await RunAsync("bash", ["scripts/rotate-staging-keys.sh", "--data-dir", platform.DataDir, "--propagation-seconds", "2", "--skip-smoke"], env);

        Assert.True(rotate.Exit == 0, rotate.Stdout + rotate.Stderr);
        var after = await Kids();
        Assert.NotEqual(before[0], after[0]);
        Assert.Contains(before[0], after);
        Assert.Contains($"✓ {before[0]} and {after[0]} published", rotate.Stdout, StringComparison.Ordinal);

        var revoke = await RunAsync("bash", ["scripts/revoke-staging-key.sh", "--data-dir", platform.DataDir, "--kid", after[0], "--no-wait", "--skip-smoke"], env);

        Assert.True(revoke.Exit == 0, revoke.Stdout + revoke.Stderr);
        var final = await Kids();
        Assert.DoesNotContain(after[0], final);
        Assert.Contains($"REVOKED kid={after[0]} previous_status=active", revoke.Stdout, StringComparison.Ordinal);

        // A kid may start with '-' (thumbprint kids did, about one in 64, before 2026-11-29). Given bare to `loa keys
        // revoke`, "-h6O8…" read as the -h (help) option: the script printed the help, revoked nothing and failed CI.
        using var operatorKey = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        var pem = Path.Combine(platform.DataDir, "dash.pem");
        await File.WriteAllTextAsync(pem, operatorKey.ExportPkcs8PrivateKeyPem(), TestContext.Current.CancellationToken);
        const string dashKid = "-h6O8N9k8cy4b1LK";
        var import = await LoaProcess.RunAsync("keys", "import", "--service", "freeside", "--data-dir", platform.DataDir, "--pem", pem, "--kid=" + dashKid);
        Assert.True(import.ExitCode == 0, import.Stderr);

        var dashed = await RunAsync("bash", ["scripts/revoke-staging-key.sh", "--data-dir", platform.DataDir, "--kid", dashKid, "--no-wait", "--skip-smoke"], env);

        Assert.True(dashed.Exit == 0, dashed.Stdout + dashed.Stderr);
        Assert.Contains($"REVOKED kid={dashKid} previous_status=active", dashed.Stdout, StringComparison.Ordinal);
        Assert.DoesNotContain(dashKid, await Kids());
    }

    sealed class OneKey(SigningKey key) : IKeySource
    {
        public ValueTask<IReadOnlyList<SigningKey>> GetKeysAsync(string? kid, CancellationToken ct) =>
            ValueTask.FromResult<IReadOnlyList<SigningKey>>(kid is null || kid == key.Kid ? [key] : []);
    }
}
