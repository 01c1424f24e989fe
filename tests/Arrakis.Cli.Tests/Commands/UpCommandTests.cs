using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;

namespace Arrakis.Cli.Tests.Commands;

/// <summary><c>loa up</c> as a real process on a fresh data directory, probed over HTTP like an operator would.</summary>
public sealed class UpCommandTests
{
    static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(30) };

    [Fact]
    public async Task A_service_that_refuses_a_setting_is_one_line_naming_it_and_exit_1()
    {
        // Before: an unhandled exception, its stack trace on stderr, and exit code 134 (abort).
        var (exit, _, stderr) = await LoaProcess.RunAsync(new Dictionary<string, string> { ["Reputation__HalfLifeDays"] = "100000" },
            "up", "--freeside-port", TestStorage.FreePort().ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--dixie-port", TestStorage.FreePort().ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--finn-port", TestStorage.FreePort().ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--data-dir", TestStorage.TempDir());

        Assert.Equal(1, exit);
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Equal("loa: dixie did not start: Reputation:HalfLifeDays must be a positive number of days, at most 36500.", line);
    }

    [Fact]
    public async Task Loa_up_on_a_fresh_directory_brings_three_healthy_services_and_writes_a_usable_test_key()
    {
        var dataDir = Path.Combine(TestStorage.TempDir(), "fresh-never-created");
        var sinceStart = System.Diagnostics.Stopwatch.StartNew();
        await using var up = await LoaProcess.Up.StartAsync(dataDir);
        var readyAt = sinceStart.Elapsed;

        // Uptime counts from the process's start, not from the first health request. The process started after
        // sinceStart (a start retried on fresh ports starts a later one) and before it said it was ready, so the uptime
        // lies between the time since it was ready and the time since sinceStart, however slow the machine is.
        await Task.Delay(TimeSpan.FromSeconds(2.5), TestContext.Current.CancellationToken);
        var sinceReady = sinceStart.Elapsed - readyAt;
        using (var first = await Http.GetAsync(up.FinnUrl + "/health/live", TestContext.Current.CancellationToken))
        {
            var uptime = (await first.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("uptime_seconds").GetInt64();
            Assert.InRange(uptime, (long)sinceReady.TotalSeconds, (long)Math.Ceiling(sinceStart.Elapsed.TotalSeconds));
        }

        foreach (var url in new[] { up.FreesideUrl + "/health", up.DixieUrl + "/api/health", up.FinnUrl + "/health" })
        {
            using var health = await Http.GetAsync(url, TestContext.Current.CancellationToken);
            Assert.Equal(HttpStatusCode.OK, health.StatusCode);
            Assert.Equal("healthy", (await health.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("status").GetString());
        }

        using var jwks = await Http.GetAsync(up.FreesideUrl + "/.well-known/jwks.json", TestContext.Current.CancellationToken);
        var key = (await jwks.Content.ReadFromJsonAsync<JsonElement>(TestContext.Current.CancellationToken)).GetProperty("keys")[0];
        Assert.Equal("ES256", key.GetProperty("alg").GetString());
        Assert.False(string.IsNullOrEmpty(key.GetProperty("kid").GetString()));

        var pem = Path.Combine(dataDir, "staging.pem");
        Assert.Contains("TEST_KEY_PATH=" + pem, up.Output, StringComparison.Ordinal);
        Assert.StartsWith("-----BEGIN PRIVATE KEY-----", await File.ReadAllTextAsync(pem, TestContext.Current.CancellationToken), StringComparison.Ordinal);
        Assert.True(File.Exists(Path.Combine(dataDir, "master.key")));
        Assert.True(File.Exists(Path.Combine(dataDir, "freeside.db")));

        var (code, token, stderr) = await LoaProcess.RunAsync("jwt", "sign", "--key", pem);
        Assert.True(code == 0, stderr);
        Assert.Equal(3, token.Split('.').Length);

        using var request = new HttpRequestMessage(HttpMethod.Post, up.FreesideUrl + "/api/v1/auth/chain");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        using var chain = await Http.SendAsync(request, TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.OK, chain.StatusCode);

        var exit = await up.InterruptAsync();
        Assert.True(exit == 0, $"loa up exited {exit}:\n{up.Output}");
    }

    /// <summary>
    /// A second <c>loa up</c> on the data directory of a running one (on other ports) ran beside it on the same SQLite
    /// files, with its own in-memory jti replay cache and rate limits: a token already used on one was accepted by the
    /// other. It is refused with one line, before it touches the data; the first runs on.
    /// </summary>
    [Fact]
    public async Task A_second_loa_up_on_the_data_directory_of_a_running_one_is_refused_with_one_line()
    {
        var dataDir = TestStorage.TempDir();
        await using var first = await LoaProcess.Up.StartAsync(dataDir);

        await using var second = LoaRun.Start(null, ["up", "--data-dir", dataDir, .. FreshPorts()]);
        var exit = await second.WaitForExitAsync(TimeSpan.FromSeconds(60));

        Assert.True(exit == 1, $"the second loa up exited {exit}:\n{second.Output}");
        Assert.Equal(
            $"loa: the data directory {dataDir} is in use by another loa up; stop that one, or give this one another --data-dir",
            Assert.Single(second.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries)));
        Assert.DoesNotContain("LOA_READY", second.Output, StringComparison.Ordinal);

        using var health = await Http.GetAsync(first.FreesideUrl + "/health", TestContext.Current.CancellationToken);
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        Assert.Equal(0, await first.InterruptAsync());

        // The lock goes with the process that held it: the directory is free again.
        await using var again = await LoaProcess.Up.StartAsync(dataDir);
        Assert.Equal(0, await again.InterruptAsync());
    }

    /// <summary>A data directory that is a file was "The file '…' already exists.", which does not say what is wrong.</summary>
    [Fact]
    public async Task A_data_directory_that_is_a_file_is_one_line_saying_so()
    {
        var file = Path.Combine(TestStorage.TempDir(), "not-a-directory");
        await File.WriteAllTextAsync(file, "x", TestContext.Current.CancellationToken);

        var (exit, stdout, stderr) = await LoaProcess.RunAsync(["up", "--data-dir", file, .. FreshPorts()]);

        Assert.Equal(1, exit);
        Assert.Equal(
            $"loa: the data directory {file} is a file; give --data-dir (or LOA_DATA_DIR) a directory",
            Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries)));
        Assert.DoesNotContain("LOA_READY", stdout, StringComparison.Ordinal);
    }

    /// <summary>
    /// A lock file that is there but cannot be opened for a reason other than another process's lock was reported as
    /// "in use by another loa up", sending the operator after a process that does not exist. The case met in practice is
    /// a data directory used before (the lock file stays) on a read-only mount (EROFS); here something that is not a
    /// file sits in the lock file's place (a socket: ENXIO), which fails the same way without mounting anything. Only a
    /// lock held elsewhere is "in use"; anything else says what the system said.
    /// </summary>
    [Fact]
    public async Task A_lock_file_that_cannot_be_opened_is_not_reported_as_another_loa_up()
    {
        var dataDir = TestStorage.TempDir();
        var lockPath = Path.Combine(dataDir, "loa-up.lock");
        using var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        socket.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(lockPath));

        var (exit, stdout, stderr) = await LoaProcess.RunAsync(["up", "--data-dir", dataDir, .. FreshPorts()]);

        Assert.Equal(1, exit);
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"loa: cannot use the data directory {dataDir}: ", line, StringComparison.Ordinal);
        Assert.Contains(lockPath, line, StringComparison.Ordinal);
        Assert.DoesNotContain("LOA_READY", stdout, StringComparison.Ordinal);
    }

    /// <summary>
    /// LOA_READY means the platform answers healthy. With Redis unreachable the three services started, every health
    /// route answered 503, and LOA_READY was printed anyway. Now loa up says on stderr what the services report, prints
    /// LOA_READY once all three answer healthy, and a SIGTERM while it waits still stops it cleanly.
    /// </summary>
    [Fact]
    public async Task Loa_ready_is_printed_only_once_all_three_services_answer_healthy()
    {
        var ct = TestContext.Current.CancellationToken;
        var (redisHost, redisPort) = TestStorage.Redis is { } configured
            ? StackExchange.Redis.ConfigurationOptions.Parse(configured).EndPoints.Single() switch
            {
                DnsEndPoint dns => (dns.Host, dns.Port),
                IPEndPoint ip => (ip.Address.ToString(), ip.Port),
                var other => throw new InvalidOperationException($"unexpected endpoint {other}"),
            }
            : ("127.0.0.1", TestStorage.FreePort()); // nothing listens there: the Redis never comes back
        await using var proxy = new TcpProxy(redisHost, redisPort);
        proxy.Cut();
        var ports = FreshPorts();
        await using var up = LoaRun.Start(
            new Dictionary<string, string> { ["Redis__Configuration"] = $"127.0.0.1:{proxy.Port}", ["Redis__KeyPrefix"] = $"arrakis-test-{Guid.NewGuid():N}:" },
            ["up", "--data-dir", TestStorage.TempDir(), .. ports]);

        var first = await up.WaitForLineAsync(l => l.Contains("LOA_READY", StringComparison.Ordinal) || l.StartsWith("loa: waiting", StringComparison.Ordinal), TimeSpan.FromSeconds(90));
        Assert.True(first is not null && first.StartsWith("loa: waiting for the services to answer healthy: ", StringComparison.Ordinal), up.Output);
        foreach (var service in new[] { "freeside", "dixie", "finn" })
        {
            Assert.Contains($"{service} 503 unhealthy (redis_unreachable)", first, StringComparison.Ordinal);
        }

        if (TestStorage.Redis is null)
        {
            Assert.Equal(0, await up.TerminateAsync());
            Assert.DoesNotContain("LOA_READY", up.Output, StringComparison.Ordinal);
            return;
        }

        proxy.Restore();
        Assert.NotNull(await up.WaitForLineAsync(l => l.Contains("LOA_READY", StringComparison.Ordinal), TimeSpan.FromSeconds(60)));
        foreach (var url in new[] { $"http://127.0.0.1:{ports[1]}/health", $"http://127.0.0.1:{ports[3]}/api/health", $"http://127.0.0.1:{ports[5]}/health" })
        {
            using var health = await Http.GetAsync(url, ct);
            Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        }

        Assert.Equal(0, await up.TerminateAsync());
    }

    /// <summary>
    /// <c>--host 0.0.0.0</c> (to be reached from outside the machine or a container) had the services call each other
    /// at http://0.0.0.0:…, which .NET refuses as a target: LOA_READY was printed, dixie answered unhealthy
    /// (finn_unreachable), every invoke 503 FINN_UNAVAILABLE and the token chain 502. They call the loopback address.
    /// Kestrel's own spelling of every interface, <c>*</c>, is not a URI host at all: loa up ended in an unhandled
    /// UriFormatException (exit 134) while waiting for the services' health.
    /// </summary>
    [Theory]
    [InlineData("0.0.0.0")]
    [InlineData("*")]
    public async Task Loa_up_bound_to_every_interface_still_serves_the_chain_between_its_services(string everyInterface)
    {
        var ct = TestContext.Current.CancellationToken;
        var dataDir = TestStorage.TempDir();
        await using var up = await LoaProcess.Up.StartAsync(dataDir, null, "--host", everyInterface);

        using (var health = await Http.GetAsync(up.DixieUrl + "/api/health", ct))
        {
            Assert.Equal("healthy", (await health.Content.ReadFromJsonAsync<JsonElement>(ct)).GetProperty("status").GetString());
        }

        var (code, token, stderr) = await LoaProcess.RunAsync("jwt", "sign", "--key", Path.Combine(dataDir, "staging.pem"));
        Assert.True(code == 0, stderr);
        using var request = new HttpRequestMessage(HttpMethod.Post, up.FreesideUrl + "/api/v1/auth/chain");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        using var chain = await Http.SendAsync(request, ct);
        Assert.True(chain.StatusCode == HttpStatusCode.OK, await chain.Content.ReadAsStringAsync(ct));
        Assert.Equal(0, await up.InterruptAsync());
    }

    /// <summary>A --host that cannot be a URL's host is a usage error, one line, before the data directory is touched.</summary>
    [Fact]
    public async Task A_host_that_is_not_an_address_or_host_name_is_a_usage_error()
    {
        var dataDir = Path.Combine(TestStorage.TempDir(), "never-created");

        var (exit, stdout, stderr) = await LoaProcess.RunAsync(["up", "--data-dir", dataDir, "--host", "http://0.0.0.0", .. FreshPorts()]);

        Assert.Equal(2, exit);
        Assert.Equal("error: --host needs an address or host name to bind, e.g. 127.0.0.1, 0.0.0.0, :: or * (not 'http://0.0.0.0')",
            Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries)));
        Assert.DoesNotContain("LOA_READY", stdout, StringComparison.Ordinal);
        Assert.False(Directory.Exists(dataDir));
    }

    /// <summary>
    /// staging.pem was written only after all three services had started: a path there that cannot be written (here a
    /// directory) ended loa up with "Access to the path … is denied", after three services had listened and freeside had
    /// created its database. It is one line naming the path, before any service is built.
    /// </summary>
    [Fact]
    public async Task A_staging_pem_that_cannot_be_written_is_one_line_naming_it_before_any_service_starts()
    {
        var dataDir = TestStorage.TempDir();
        var keyPath = Path.Combine(dataDir, "staging.pem");
        Directory.CreateDirectory(keyPath);

        var (exit, stdout, stderr) = await LoaProcess.RunAsync(["up", "--data-dir", dataDir, .. FreshPorts()]);

        Assert.Equal(1, exit);
        Assert.Equal(
            $"loa: the test key path {keyPath} is a directory; remove it, or give --data-dir another directory",
            Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries)));
        Assert.DoesNotContain("LOA_READY", stdout, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(dataDir, "freeside.db")), "freeside was built before the key path was checked");
    }

    static string[] FreshPorts() =>
    [
        "--freeside-port", TestStorage.FreePort().ToString(System.Globalization.CultureInfo.InvariantCulture),
        "--dixie-port", TestStorage.FreePort().ToString(System.Globalization.CultureInfo.InvariantCulture),
        "--finn-port", TestStorage.FreePort().ToString(System.Globalization.CultureInfo.InvariantCulture),
    ];

    /// <summary>A <c>loa</c> process whose lines are read as they come; disposing kills it if it still runs.</summary>
    sealed class LoaRun : IAsyncDisposable
    {
        readonly Process _process;
        readonly StringBuilder _out = new();
        readonly StringBuilder _err = new();
        readonly List<(Func<string, bool> Match, TaskCompletionSource<string?> Seen)> _waiters = [];

        LoaRun(Process process) => _process = process;

        public string Output
        {
            get
            {
                lock (_out)
                {
                    return _out.ToString();
                }
            }
        }

        public string Stderr
        {
            get
            {
                lock (_out)
                {
                    return _err.ToString();
                }
            }
        }

        public static LoaRun Start(IDictionary<string, string>? env, params string[] args)
        {
            var psi = LoaProcess.StartInfo(args);
            foreach (var (k, v) in env ?? new Dictionary<string, string>())
            {
                psi.Environment[k] = v;
            }

            var run = new LoaRun(Process.Start(psi)!);
            run._process.OutputDataReceived += (_, e) => run.OnLine(e.Data, stderr: false);
            run._process.ErrorDataReceived += (_, e) => run.OnLine(e.Data, stderr: true);
            run._process.BeginOutputReadLine();
            run._process.BeginErrorReadLine();
            return run;
        }

        void OnLine(string? line, bool stderr)
        {
            if (line is null)
            {
                return;
            }

            lock (_out)
            {
                _out.AppendLine(line);
                if (stderr)
                {
                    _err.AppendLine(line);
                }

                foreach (var waiter in _waiters.Where(w => w.Match(line)).ToList())
                {
                    waiter.Seen.TrySetResult(line);
                    _waiters.Remove(waiter);
                }
            }
        }

        /// <summary>The first line from now on that matches, or null if none came within <paramref name="timeout"/> or the process ended.</summary>
        public async Task<string?> WaitForLineAsync(Func<string, bool> match, TimeSpan timeout)
        {
            var seen = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_out)
            {
                _waiters.Add((match, seen));
            }

            await Task.WhenAny(seen.Task, _process.WaitForExitAsync(), Task.Delay(timeout));
            return seen.Task.IsCompleted ? await seen.Task : null;
        }

        /// <summary>The exit code, or null if it still ran after <paramref name="timeout"/>.</summary>
        public async Task<int?> WaitForExitAsync(TimeSpan timeout)
        {
            await Task.WhenAny(_process.WaitForExitAsync(), Task.Delay(timeout));
            if (!_process.HasExited)
            {
                return null;
            }

            await _process.WaitForExitAsync(); // the output read to its end
            return _process.ExitCode;
        }

        /// <summary>SIGTERM, as a process manager stops it; the exit code, or null if it did not exit within 30 s.</summary>
        public async Task<int?> TerminateAsync()
        {
            if (!_process.HasExited)
            {
                using var kill = Process.Start("kill", ["-TERM", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
                await kill!.WaitForExitAsync();
            }

            return await WaitForExitAsync(TimeSpan.FromSeconds(30));
        }

        public async ValueTask DisposeAsync()
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync();
            }

            _process.Dispose();
        }
    }

    [Fact]
    public async Task Keys_commands_rotate_list_revoke_and_import_through_the_database()
    {
        var dataDir = TestStorage.TempDir();
        var (code, listed, err) = await LoaProcess.RunAsync("keys", "list", "--service", "freeside", "--data-dir", dataDir);
        Assert.True(code == 0, err);
        Assert.Contains(" active ", listed, StringComparison.Ordinal);

        foreach (var outOfRange in new[] { "-1", "86401" })
        {
            (code, _, err) = await LoaProcess.RunAsync("keys", "rotate", "--service", "freeside", "--data-dir", dataDir, "--propagation-seconds", outOfRange);
            Assert.Equal(2, code);
            Assert.Contains("--propagation-seconds must be from 0 to 86400", err, StringComparison.Ordinal);
        }

        (code, var rotated, err) = await LoaProcess.RunAsync("keys", "rotate", "--service", "freeside", "--data-dir", dataDir, "--propagation-seconds", "0");
        Assert.True(code == 0, err);
        var kid = rotated.Split("kid=")[1].Split(' ')[0];
        (_, listed, _) = await LoaProcess.RunAsync("keys", "list", "--service", "freeside", "--data-dir", dataDir);
        Assert.Contains(kid + " ", listed, StringComparison.Ordinal);
        Assert.Contains(" retired ", listed, StringComparison.Ordinal);

        (code, var revoked, err) = await LoaProcess.RunAsync("keys", "revoke", "--service", "freeside", "--data-dir", dataDir, kid);
        Assert.True(code == 0, err);
        Assert.Contains("REVOKED kid=" + kid + " previous_status=active", revoked, StringComparison.Ordinal);

        (code, _, err) = await LoaProcess.RunAsync("keys", "revoke", "--service", "freeside", "--data-dir", dataDir, "missing-kid");
        Assert.Equal(1, code);
        Assert.Contains("no key with kid", err, StringComparison.Ordinal);

        using var ecdsa = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        var sec1 = Path.Combine(dataDir, "operator.pem");
        await File.WriteAllTextAsync(sec1, ecdsa.ExportECPrivateKeyPem(), TestContext.Current.CancellationToken);
        (code, var imported, err) = await LoaProcess.RunAsync("keys", "import", "--service", "freeside", "--data-dir", dataDir, "--pem", sec1, "--kid", "operator-1");
        Assert.True(code == 0, err);
        Assert.Contains("IMPORTED kid=operator-1 status=active", imported, StringComparison.Ordinal);

        var bad = Path.Combine(dataDir, "bad.pem");
        await File.WriteAllTextAsync(bad, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", TestContext.Current.CancellationToken);
        (code, _, err) = await LoaProcess.RunAsync("keys", "import", "--service", "freeside", "--data-dir", dataDir, "--pem", bad);
        Assert.Equal(1, code);
        Assert.Contains("PKCS#8", err, StringComparison.Ordinal);

        (code, _, err) = await LoaProcess.RunAsync("keys", "list", "--service", "dixie", "--data-dir", dataDir);
        Assert.Equal(2, code);
        Assert.Contains("--service must be freeside or finn", err, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Jwt_sign_prints_the_checklist_shaped_token_without_kid()
    {
        var dataDir = TestStorage.TempDir();
        using var ecdsa = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        var pem = Path.Combine(dataDir, "k.pem");
        await File.WriteAllTextAsync(pem, ecdsa.ExportPkcs8PrivateKeyPem(), TestContext.Current.CancellationToken);

        var (code, token, err) = await LoaProcess.RunAsync("jwt", "sign", "--key", pem, "--access-level", "pro");
        Assert.True(code == 0, err);
        Assert.DoesNotContain('\n', token);
        var jwt = new Microsoft.IdentityModel.JsonWebTokens.JsonWebToken(token);
        Assert.Equal("ES256", jwt.Alg);
        Assert.True(string.IsNullOrEmpty(jwt.Kid));
        Assert.Equal("arrakis", jwt.Issuer);
        Assert.Equal(["arrakis"], jwt.Audiences);
        Assert.Equal("test-tenant", jwt.GetPayloadValue<string>("tenant_id"));
        Assert.Equal("pro", jwt.GetPayloadValue<string>("access_level"));
        Assert.Equal(300, (jwt.ValidTo - jwt.IssuedAt).TotalSeconds);
        Assert.False(string.IsNullOrEmpty(jwt.Id));

        (code, _, err) = await LoaProcess.RunAsync("jwt", "sign", "--key", Path.Combine(dataDir, "missing.pem"));
        Assert.Equal(1, code);
        Assert.Contains("JWT signing failed", err, StringComparison.Ordinal);
    }

    /// <summary>
    /// A --ttl of 0 or less printed an already expired token and exited 0; it is refused. A lifetime past the services'
    /// default limit still signs (an operator may have raised the limit) but says the default services refuse it.
    /// </summary>
    [Fact]
    public async Task Jwt_sign_refuses_a_lifetime_below_one_second_and_warns_above_the_default_limit()
    {
        var dataDir = TestStorage.TempDir();
        using var ecdsa = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        var pem = Path.Combine(dataDir, "k.pem");
        await File.WriteAllTextAsync(pem, ecdsa.ExportPkcs8PrivateKeyPem(), TestContext.Current.CancellationToken);

        foreach (var bad in new[] { "0", "-60" })
        {
            var (code, token, err) = await LoaProcess.RunAsync("jwt", "sign", "--key", pem, "--ttl", bad);
            Assert.Equal(2, code); // a malformed value is a usage error
            Assert.Equal("", token);
            Assert.Contains("--ttl must be at least 1 second", err, StringComparison.Ordinal);
        }

        var (ok, longToken, warning) = await LoaProcess.RunAsync("jwt", "sign", "--key", pem, "--ttl", "3600");
        Assert.Equal(0, ok);
        Assert.Equal(3600, (new Microsoft.IdentityModel.JsonWebTokens.JsonWebToken(longToken).ValidTo - new Microsoft.IdentityModel.JsonWebTokens.JsonWebToken(longToken).IssuedAt).TotalSeconds);
        Assert.Contains("refused by services running the default Keyring:MaxTokenLifetime (900 s)", warning, StringComparison.Ordinal);

        // Operator tokens go by freeside's own limit (1 h): 3600 s is fine, 3601 s is warned about.
        var (admin, _, adminWarning) = await LoaProcess.RunAsync("jwt", "sign", "--key", pem, "--aud", "arrakis-admin", "--claim", "role=operator", "--ttl", "3600");
        Assert.Equal((0, ""), (admin, adminWarning));
        var (tooLong, _, tooLongWarning) = await LoaProcess.RunAsync("jwt", "sign", "--key", pem, "--aud", "arrakis-admin", "--ttl", "3601");
        Assert.Equal(0, tooLong);
        Assert.Contains("refused by freeside's operator token limit (3600 s)", tooLongWarning, StringComparison.Ordinal);
    }
}
