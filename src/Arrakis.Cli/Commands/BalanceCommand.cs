using System.CommandLine;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Yarp.ReverseProxy.Configuration;

namespace Arrakis.Cli.Commands;

/// <summary>
/// <c>loa balance --listen URL --to URL,URL</c>: a small round-robin reverse proxy (YARP) for running several replicas
/// of a service behind one address on a single machine, as the multi-replica CI run does.
/// </summary>
internal static class BalanceCommand
{
    public static Command Create()
    {
        var listen = new Option<string>("--listen") { Description = "Address to listen on, e.g. http://127.0.0.1:3100", Required = true };
        var to = new Option<string>("--to") { Description = "Comma-separated replica base URLs", Required = true };
        var command = new Command("balance", "Round-robin reverse proxy in front of several replicas (for local multi-replica runs).") { listen, to };
        command.SetAction(async (parse, ct) =>
        {
            var targets = parse.GetValue(to)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (targets.Length == 0 || targets.Any(t => !Uri.TryCreate(t, UriKind.Absolute, out var u) || u.Scheme is not ("http" or "https")))
            {
                Console.Error.WriteLine("error: --to needs one or more absolute http(s) URLs, e.g. http://127.0.0.1:3010,http://127.0.0.1:3011");
                return 2;
            }

            // Checked here: Kestrel refuses a bad address (or https, which this slim host has no certificate for) only when it
            // starts, with an exception that crashed loa.
            var address = parse.GetValue(listen)!;
            if (!IsListenAddress(address))
            {
                Console.Error.WriteLine($"error: --listen needs an http:// URL with a port from 1 to 65535, e.g. http://127.0.0.1:3100 (not '{address}')");
                return 2;
            }

            // No configuration file watching: it watches the working directory recursively, .loa/ and all.
            var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = ["--hostBuilder:reloadConfigOnChange=false"] });
            builder.Logging.SetMinimumLevel(LogLevel.Warning);
            // A start that fails (the port in use) is loa's one line on stderr, not also the host's stack trace on stdout.
            builder.Logging.AddFilter("Microsoft.Extensions.Hosting.Internal.Host", LogLevel.None);
            builder.WebHost.UseUrls(address);
            builder.Services.AddReverseProxy().LoadFromMemory(
                [new RouteConfig { RouteId = "all", ClusterId = "replicas", Match = new RouteMatch { Path = "{**catch-all}" } }],
                [new ClusterConfig
                {
                    ClusterId = "replicas",
                    LoadBalancingPolicy = "RoundRobin",
                    Destinations = targets.Select((t, i) => (t, i)).ToDictionary(x => "r" + x.i, x => new DestinationConfig { Address = x.t }),
                }]);
            var app = builder.Build();
            app.MapReverseProxy();
            await app.StartAsync(ct);

            Console.WriteLine($"balancing {address} -> {string.Join(", ", targets)}");

            // Stop on Ctrl-C (the command's token) or SIGTERM (the host's lifetime), whichever comes first.
            var stop = new TaskCompletionSource();
            using var onCancel = ct.Register(() => stop.TrySetResult());
            using var onStopping = app.Lifetime.ApplicationStopping.Register(() => stop.TrySetResult());
            await stop.Task;
            await app.StopAsync(CancellationToken.None);
            return 0;
        });
        return command;
    }

    static bool IsListenAddress(string address)
    {
        try
        {
            var parsed = BindingAddress.Parse(address);
            return parsed.Scheme == "http" && parsed.Port is >= 1 and <= 65_535;
        }
        catch (FormatException)
        {
            return false;
        }
    }
}
