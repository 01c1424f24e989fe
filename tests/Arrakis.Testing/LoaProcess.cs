using System.Diagnostics;
using System.Text;

namespace Arrakis.Testing;

/// <summary>Runs the real <c>loa</c> CLI (loa.dll next to the test assembly) as a child process.</summary>
public static class LoaProcess
{
    public static string DllPath
    {
        get
        {
            var path = Path.Combine(AppContext.BaseDirectory, "loa.dll");
            return File.Exists(path) ? path : throw new FileNotFoundException("loa.dll is not next to the tests; reference src/Arrakis.Cli from this test project.", path);
        }
    }

    public static ProcessStartInfo StartInfo(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(DllPath);
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        foreach (var k in new[] { "ConnectionStrings__Freeside", "ConnectionStrings__Finn", "ConnectionStrings__Dixie", "Redis__Configuration", "LOA_DATA_DIR" })
        {
            psi.Environment.Remove(k);
        }

        return psi;
    }

    /// <summary>Runs to completion and returns exit code, stdout and stderr.</summary>
    public static async Task<(int ExitCode, string Stdout, string Stderr)> RunAsync(IDictionary<string, string>? env, params string[] args)
    {
        var psi = StartInfo(args);
        foreach (var (k, v) in env ?? new Dictionary<string, string>())
        {
            psi.Environment[k] = v;
        }

        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(3));
        await process.WaitForExitAsync(timeout.Token);
        return (process.ExitCode, await stdout, await stderr);
    }

    public static Task<(int ExitCode, string Stdout, string Stderr)> RunAsync(params string[] args) => RunAsync(null, args);

    /// <summary>A running <c>loa up</c>; disposing asks it to stop (SIGTERM) and waits for a clean exit.</summary>
    public sealed class Up : IAsyncDisposable
    {
        readonly Process _process;
        readonly StringBuilder _out = new();

        Up(Process process, string dataDir, int freeside, int dixie, int finn)
        {
            _process = process;
            DataDir = dataDir;
            FreesideUrl = $"http://127.0.0.1:{freeside}";
            DixieUrl = $"http://127.0.0.1:{dixie}";
            FinnUrl = $"http://127.0.0.1:{finn}";
        }

        public string DataDir { get; }

        public string FreesideUrl { get; }

        public string DixieUrl { get; }

        public string FinnUrl { get; }

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

        public int? ExitCode => _process.HasExited ? _process.ExitCode : null;

        public static async Task<Up> StartAsync(string? dataDir = null, IDictionary<string, string>? env = null, params string[] extraArgs)
        {
            for (var attempt = 1; ; attempt++)
            {
                try
                {
                    return await StartOnceAsync(dataDir, env, extraArgs);
                }
                catch (InvalidOperationException ex) when (attempt < 5 && ex.Message.Contains("address already in use", StringComparison.OrdinalIgnoreCase))
                {
                    // A port from FreePort() was taken before loa up bound it: try again on fresh ports.
                }
            }
        }

        static async Task<Up> StartOnceAsync(string? dataDir, IDictionary<string, string>? env, string[] extraArgs)
        {
            dataDir ??= TestStorage.TempDir();
            var (fs, dx, fn) = (TestStorage.FreePort(), TestStorage.FreePort(), TestStorage.FreePort());
            var psi = StartInfo(["up", "--data-dir", dataDir, "--freeside-port", fs.ToString(), "--dixie-port", dx.ToString(), "--finn-port", fn.ToString(), .. extraArgs]);
            foreach (var (k, v) in env ?? new Dictionary<string, string>())
            {
                psi.Environment[k] = v;
            }

            var process = Process.Start(psi)!;
            var up = new Up(process, dataDir, fs, dx, fn);
            var ready = new TaskCompletionSource();
            void OnLine(string? line)
            {
                if (line is null)
                {
                    return;
                }

                lock (up._out)
                {
                    up._out.AppendLine(line);
                }

                if (line.Contains("LOA_READY", StringComparison.Ordinal))
                {
                    ready.TrySetResult();
                }
            }

            process.OutputDataReceived += (_, e) => OnLine(e.Data);
            process.ErrorDataReceived += (_, e) => OnLine(e.Data);
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            var finished = await Task.WhenAny(ready.Task, process.WaitForExitAsync(), Task.Delay(TimeSpan.FromSeconds(90)));
            if (finished != ready.Task)
            {
                await up.DisposeAsync();
                throw new InvalidOperationException("loa up did not become ready:\n" + up.Output);
            }

            return up;
        }

        /// <summary>
        /// Asks <c>loa up</c> to stop the way a process manager does (docker stop, ECS, systemd, scripts/ci-gate.sh) and
        /// returns its exit code, or -1 if it did not exit within 30 s (it is then killed). SIGTERM, not SIGINT: a test
        /// run started in the background (a script's <c>cmd &amp;</c>, nohup) has SIGINT ignored, every child inherits
        /// that, and the .NET runtime honours it, so a SIGINT never reached <c>loa up</c> and every stop took the 30 s.
        /// </summary>
        public async Task<int> InterruptAsync()
        {
            if (!_process.HasExited)
            {
                using var kill = Process.Start("kill", ["-TERM", _process.Id.ToString()]);
                await kill!.WaitForExitAsync();
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                try
                {
                    await _process.WaitForExitAsync(timeout.Token);
                }
                catch (OperationCanceledException)
                {
                    _process.Kill(entireProcessTree: true);
                    await _process.WaitForExitAsync();
                    return -1;
                }
            }

            return _process.ExitCode;
        }

        public async ValueTask DisposeAsync()
        {
            await InterruptAsync();
            _process.Dispose();
        }
    }
}
