using System.CommandLine;
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
        var host = new Option<string>("--host") { Description = "address to bind", DefaultValueFactory = _ => "127.0.0.1" };
        var noSeed = new Option<bool>("--no-seed") { Description = "skip seeding the checklist's test data" };
        var command = new Command("up", "Run freeside, dixie and finn in one process (SQLite under the data directory; no other set-up).")
        {
            freesidePort, dixiePort, finnPort, host, noSeed, CliContext.DataDir,
        };
        command.SetAction(async (parse, ct) =>
        {
            var dataDir = StorageOptions.DataDirectory(CliContext.Configuration(parse.GetValue(CliContext.DataDir)));
            Directory.CreateDirectory(dataDir);
            var bind = parse.GetValue(host)!;
            var ports = (Freeside: parse.GetValue(freesidePort), Dixie: parse.GetValue(dixiePort), Finn: parse.GetValue(finnPort));
            var urls = (
                Freeside: $"http://{bind}:{ports.Freeside}",
                Dixie: $"http://{bind}:{ports.Dixie}",
                Finn: $"http://{bind}:{ports.Finn}");
            string[] Args(string url) =>
            [
                "--urls", url,
                "--LOA_DATA_DIR", dataDir,
                "--Services:FreesideUrl", urls.Freeside,
                "--Services:DixieUrl", urls.Dixie,
                "--Services:FinnUrl", urls.Finn,
            ];

            // A service that cannot be built or started (a refused setting, a port in use) is one line naming it, exit 1.
            var freeside = await Step("freeside", () => FreesideService.CreateAsync(Args(urls.Freeside)));
            var finn = await Step("finn", () => FinnService.CreateAsync(Args(urls.Finn)));
            var dixie = await Step("dixie", () => DixieService.CreateAsync(Args(urls.Dixie)));
            WebApplication[] apps = [freeside, finn, dixie];
            foreach (var (app, name) in apps.Zip(["freeside", "finn", "dixie"]))
            {
                await Step(name, async () =>
                {
                    await app.StartAsync(ct);
                    return app;
                });
            }

            var keyPath = Path.Combine(dataDir, "staging.pem");
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
            Console.WriteLine("LOA_READY");
            Console.Out.Flush();

            var stop = new TaskCompletionSource();
            using var registration = ct.Register(() => stop.TrySetResult());
            foreach (var app in apps)
            {
                app.Lifetime.ApplicationStopping.Register(() => stop.TrySetResult());
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
