using System.CommandLine;
using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text.Json;
using Arrakis.Dixie;
using Arrakis.Finn;
using Arrakis.Freeside;
using Arrakis.Shared.Hosting;
using Arrakis.Shared.Storage;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Cli.Commands;

/// <summary><c>loa up</c>: the whole platform in one process, each service on its own port, data in SQLite under the data directory.</summary>
internal static class UpCommand
{
    public static Command Create()
    {
        var freesidePort = new Option<int>("--freeside-port") { Description = "freeside port", DefaultValueFactory = _ => 3000 };
        var dixiePort = new Option<int>("--dixie-port") { Description = "dixie port", DefaultValueFactory = _ => 3001 };
        var finnPort = new Option<int>("--finn-port") { Description = "finn port", DefaultValueFactory = _ => 3002 };
        var host = new Option<string>("--host") { Description = "address to bind (0.0.0.0, :: or * for every interface)", DefaultValueFactory = _ => "127.0.0.1" };
        var noSeed = new Option<bool>("--no-seed") { Description = "skip seeding the checklist's test data" };
        var command = new Command("up", "Run freeside, dixie and finn in one process (SQLite under the data directory; no other set-up).")
        {
            freesidePort, dixiePort, finnPort, host, noSeed, CliContext.DataDir,
        };
        command.SetAction(async (parse, ct) =>
        {
            var (bind, reach) = Hosts(parse.GetValue(host)!);
            if (Uri.CheckHostName(reach.Trim('[', ']')) == UriHostNameType.Unknown)
            {
                Console.Error.WriteLine($"error: --host needs an address or host name to bind, e.g. 127.0.0.1, 0.0.0.0, :: or * (not '{parse.GetValue(host)}')");
                return 2;
            }

            var dataDir = StorageOptions.DataDirectory(CliContext.Configuration(parse.GetValue(CliContext.DataDir)));
            using var dataLock = LockDataDirectory(dataDir);
            var keyPath = Path.Combine(dataDir, "staging.pem");
            CheckTestKeyWritable(keyPath);
            var ports = (Freeside: parse.GetValue(freesidePort), Dixie: parse.GetValue(dixiePort), Finn: parse.GetValue(finnPort));
            var urls = (
                Freeside: $"http://{reach}:{ports.Freeside}",
                Dixie: $"http://{reach}:{ports.Dixie}",
                Finn: $"http://{reach}:{ports.Finn}");
            string[] Args(int port) =>
            [
                "--urls", $"http://{bind}:{port}",
                "--LOA_DATA_DIR", dataDir,
                "--Services:FreesideUrl", urls.Freeside,
                "--Services:DixieUrl", urls.Dixie,
                "--Services:FinnUrl", urls.Finn,
            ];

            // A service that cannot be built or started (a refused setting, a port in use) is one line naming it, exit 1.
            var freeside = await Step("freeside", () => FreesideService.CreateAsync(Args(ports.Freeside)));
            var finn = await Step("finn", () => FinnService.CreateAsync(Args(ports.Finn)));
            var dixie = await Step("dixie", () => DixieService.CreateAsync(Args(ports.Dixie)));
            WebApplication[] apps = [freeside, finn, dixie];
            foreach (var (app, name) in apps.Zip(["freeside", "finn", "dixie"]))
            {
                await Step(name, async () =>
                {
                    await app.StartAsync(ct);
                    return app;
                });
            }

            WriteTestKey(freeside.Services.GetRequiredService<Keyring>(), keyPath);
            if (!parse.GetValue(noSeed))
            {
                foreach (var line in await ActivatorUtilities.CreateInstance<Arrakis.Freeside.Seeding.Seeder>(freeside.Services).SeedAsync(ct))
                {
                    Console.WriteLine(line);
                }
            }

            Console.WriteLine($"freeside  {urls.Freeside}  (health {urls.Freeside}/health, JWKS {urls.Freeside}/.well-known/jwks.json)");
            Console.WriteLine($"dixie     {urls.Dixie}  (health {urls.Dixie}/api/health)");
            Console.WriteLine($"finn      {urls.Finn}  (health {urls.Finn}/health)");
            Console.WriteLine($"data      {dataDir}");
            Console.WriteLine($"TEST_KEY_PATH={keyPath}");
            Console.Out.Flush();

            var stop = new TaskCompletionSource();
            using var registration = ct.Register(() => stop.TrySetResult());
            foreach (var app in apps)
            {
                app.Lifetime.ApplicationStopping.Register(() => stop.TrySetResult());
            }

            if (await WaitHealthyAsync([("freeside", urls.Freeside + "/health"), ("dixie", urls.Dixie + "/api/health"), ("finn", urls.Finn + "/health")], stop.Task))
            {
                Console.WriteLine("LOA_READY");
                Console.Out.Flush();
            }

            await stop.Task;
            foreach (var app in apps.Reverse())
            {
                await app.StopAsync(CancellationToken.None);
                await app.DisposeAsync();
            }

            return 0;
        });
        return command;
    }

    /// <summary>
    /// The host to bind and the host to call the services on. A wildcard (0.0.0.0, ::) cannot be called: .NET refuses it
    /// as a target, so with <c>--host 0.0.0.0</c> every call between the services failed (invokes 503 FINN_UNAVAILABLE,
    /// dixie unhealthy) while LOA_READY was printed. They call the loopback address of its family instead. An IPv6
    /// address goes in brackets in a URL. Kestrel's own wildcards, <c>*</c> and <c>+</c> (every interface, IPv6 and
    /// IPv4), are bound as they are and called on 127.0.0.1: as a URL's host they are not even a URI (loa up ended in an
    /// unhandled UriFormatException).
    /// </summary>
    static (string Bind, string Reach) Hosts(string host)
    {
        if (host is "*" or "+")
        {
            return (host, IPAddress.Loopback.ToString());
        }

        if (!IPAddress.TryParse(host.Trim('[', ']'), out var ip))
        {
            return (host, host);
        }

        static string InUrl(IPAddress a) => a.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{a}]" : a.ToString();
        var reach = ip.Equals(IPAddress.Any) ? IPAddress.Loopback : ip.Equals(IPAddress.IPv6Any) ? IPAddress.IPv6Loopback : ip;
        return (InUrl(ip), InUrl(reach));
    }

    /// <summary>The lock file a running <c>loa up</c> holds in its data directory.</summary>
    const string LockFileName = "loa-up.lock";

    /// <summary>
    /// Creates the data directory and holds its lock for as long as this <c>loa up</c> runs. A second <c>loa up</c> on
    /// the same directory (on other ports) ran beside the first on the same SQLite files, each with its own in-memory
    /// jti replay cache and rate limits: a token refused as a replay by one was accepted by the other. A directory that
    /// is a file, or that cannot be written, is said as such here rather than as a SQLite error that names no path.
    /// </summary>
    static FileStream LockDataDirectory(string dataDir)
    {
        if (File.Exists(dataDir))
        {
            throw new IOException($"the data directory {dataDir} is a file; give --data-dir (or LOA_DATA_DIR) a directory");
        }

        var lockPath = Path.Combine(dataDir, LockFileName);
        try
        {
            Directory.CreateDirectory(dataDir);
            return new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (UnauthorizedAccessException ex)
        {
            throw new IOException($"the data directory {dataDir} is not writable: {ex.Message}", ex);
        }
        catch (IOException ex) when (File.Exists(lockPath) && HeldByAnotherProcess(ex))
        {
            throw new IOException($"the data directory {dataDir} is in use by another loa up; stop that one, or give this one another --data-dir");
        }
        catch (IOException ex)
        {
            throw new IOException($"cannot use the data directory {dataDir}: {ex.Message}", ex);
        }
    }

    /// <summary>
    /// The test key is written once the three services are up. A <c>staging.pem</c> that cannot be written there (a
    /// directory in its place, a read-only file) failed only then, after all three had started, as "Access to the path …
    /// is denied". It is checked before any service starts. A key that is not there yet needs no check: the data
    /// directory is writable, its lock file was just created in it.
    /// </summary>
    static void CheckTestKeyWritable(string keyPath)
    {
        if (Directory.Exists(keyPath))
        {
            throw new IOException($"the test key path {keyPath} is a directory; remove it, or give --data-dir another directory");
        }

        if (!File.Exists(keyPath))
        {
            return;
        }

        try
        {
            using var _ = new FileStream(keyPath, FileMode.Open, FileAccess.Write);
        }
        catch (Exception ex) when (ex is UnauthorizedAccessException or IOException)
        {
            throw new IOException($"the test key {keyPath} cannot be written: {ex.Message}", ex);
        }
    }

    /// <summary>
    /// Whether the lock file could not be opened because another process holds its lock. .NET reports the lock's
    /// EWOULDBLOCK as an <see cref="IOException"/> whose HResult is that errno (11 on Linux, 35 on macOS and the BSDs);
    /// Windows, as a sharing or lock violation. Any other failure to open a lock file that is there (a data directory on a
    /// read-only file system, EROFS) is not a second <c>loa up</c>, and was reported as one.
    /// </summary>
    static bool HeldByAnotherProcess(IOException ex) =>
        OperatingSystem.IsWindows() ? (ex.HResult & 0xFFFF) is 32 or 33 : ex.HResult == (OperatingSystem.IsLinux() ? 11 : 35);

    /// <summary>
    /// Waits until every service's full health route answers as the launch gate's P0-1 wants it (2xx, status
    /// <c>healthy</c> or <c>degraded</c>). Started is not healthy: with an unreachable Redis all three answered 503 while
    /// <c>LOA_READY</c> was already printed. What a service still reports goes to stderr, once each time it changes.
    /// Returns false when asked to stop first.
    /// </summary>
    static async Task<bool> WaitHealthyAsync((string Service, string Url)[] routes, Task stop)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        string? said = null;
        while (!stop.IsCompleted)
        {
            var problems = await Task.WhenAll(routes.Select(async r => await HealthProblemAsync(http, r.Url) is { } problem ? $"{r.Service} {problem}" : null));
            var waiting = problems.OfType<string>().ToList();
            if (waiting.Count == 0)
            {
                return true;
            }

            var line = "loa: waiting for the services to answer healthy: " + string.Join("; ", waiting);
            if (line != said)
            {
                await Console.Error.WriteLineAsync(line);
                said = line;
            }

            await Task.WhenAny(stop, Task.Delay(TimeSpan.FromSeconds(1)));
        }

        return false;
    }

    /// <summary>Null when <paramref name="url"/> answers healthy or degraded, else what it answered.</summary>
    static async Task<string?> HealthProblemAsync(HttpClient http, string url)
    {
        try
        {
            using var response = await http.GetAsync(url);
            var body = await response.Content.ReadFromJsonAsync<JsonElement>();
            var status = body.ValueKind == JsonValueKind.Object && body.TryGetProperty("status", out var s) ? s.ToString() : null;
            if (response.IsSuccessStatusCode && status is "healthy" or "degraded")
            {
                return null;
            }

            var error = body.ValueKind == JsonValueKind.Object && body.TryGetProperty("error", out var e) ? $" ({e})" : "";
            return $"{(int)response.StatusCode} {status}{error}";
        }
        catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException or JsonException)
        {
            return "does not answer: " + ex.Message;
        }
    }

    static async Task<T> Step<T>(string service, Func<Task<T>> step)
    {
        try
        {
            return await step();
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            throw new ServiceStartException(service, ex);
        }
    }

    /// <summary>Writes the active freeside key as PKCS#8 so operators and the gate can sign user test tokens.</summary>
    static void WriteTestKey(Keyring keyring, string path)
    {
        var active = keyring.Current.Active ?? throw new InvalidOperationException("freeside has no active key");
        var pem = active.Private!.ExportPkcs8PrivateKeyPem();
        using (var writer = new StreamWriter(path, new System.Text.UTF8Encoding(encoderShouldEmitUTF8Identifier: false), KeyProtector.OwnerOnly(FileMode.Create)))
        {
            writer.Write(pem + "\n");
        }

        // A file that already existed keeps its mode on overwrite: set it too.
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }
    }
}
