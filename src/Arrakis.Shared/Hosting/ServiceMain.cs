using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Hosting;

namespace Arrakis.Shared.Hosting;

/// <summary>A service failed while it was being built or started: a setting it refused, a port it could not bind.</summary>
public sealed class ServiceStartException(string service, Exception inner)
    : Exception($"{service} did not start: {inner.Message}", inner)
{
    public string Service { get; } = service;
}

/// <summary>
/// The entry point of a service process. A failure to start (a refused setting, an unreachable database, a port in
/// use) ends the process with exit code 1 and one JSON log line, <c>STARTUP_FAILED</c>, that names the service and
/// the cause and carries the exception in <c>exception</c>; before, it was an unhandled exception's multi-line stack
/// trace and exit code 134 (abort), which a log filter sees as many unrelated lines.
/// </summary>
public static class ServiceMain
{
    public const string StartupFailedEvent = "STARTUP_FAILED";

    public static async Task<int> RunAsync(string service, string[] args, Func<string[], Task<WebApplication>> create, TextWriter? output = null)
    {
        WebApplication app;
        try
        {
            app = await StartAsync(service, () => create(args));
        }
        catch (ServiceStartException ex)
        {
            output ??= Console.Out;
            await output.WriteLineAsync(StartupFailedLine(ex));
            await output.FlushAsync();
            return 1;
        }
        catch (OperationCanceledException)
        {
            return 0; // asked to stop (SIGTERM) while starting: stopped as asked, not a crash
        }

        await using (app)
        {
            await app.WaitForShutdownAsync();
        }

        return 0;
    }

    /// <summary>Builds and starts a service; any failure on the way is a <see cref="ServiceStartException"/> naming it.</summary>
    public static async Task<WebApplication> StartAsync(string service, Func<Task<WebApplication>> create, CancellationToken ct = default)
    {
        WebApplication? app = null;
        try
        {
            app = await create();
            await app.StartAsync(ct);
            return app;
        }
        catch (Exception ex)
        {
            if (app is not null)
            {
                await app.DisposeAsync();
            }

            if (ex is OperationCanceledException)
            {
                throw;
            }

            throw new ServiceStartException(service, ex);
        }
    }

    /// <summary>The message of an exception and of each inner one that adds something, joined by ": ".</summary>
    public static string Chain(Exception e) =>
        e.InnerException is { } inner && !e.Message.Contains(inner.Message, StringComparison.OrdinalIgnoreCase) ? $"{e.Message}: {Chain(inner)}" : e.Message;

    public static string StartupFailedLine(ServiceStartException ex)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("timestamp", DateTimeOffset.UtcNow.ToString("yyyy-MM-ddTHH:mm:ss.fffZ", System.Globalization.CultureInfo.InvariantCulture));
            json.WriteString("level", "critical");
            json.WriteString("service", ex.Service);
            json.WriteString("event", StartupFailedEvent);
            json.WriteString("message", $"{StartupFailedEvent} {ex.Service} did not start: {Chain(ex.InnerException!)}");
            json.WriteString("exception", ex.InnerException!.ToString());
            json.WriteEndObject();
        }

        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }
}
