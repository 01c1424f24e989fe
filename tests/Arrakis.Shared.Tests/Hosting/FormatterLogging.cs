using Arrakis.Shared.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace Arrakis.Shared.Tests.Hosting;

/// <summary>Loggers that write every entry through the services' real <see cref="JsonLinesFormatter"/>, as their console does.</summary>
internal static class FormatterLogging
{
    public static JsonLinesFormatter Formatter(string service) => new(new OptionsMonitor<JsonLinesFormatterOptions>(
        new OptionsFactory<JsonLinesFormatterOptions>([new ConfigureNamedOptions<JsonLinesFormatterOptions>(Options.DefaultName, o => o.Service = service)], []),
        [], new OptionsCache<JsonLinesFormatterOptions>()));
}

/// <summary>Adds each formatted line to <paramref name="lines"/>, with its newline when <paramref name="keepNewline"/>.</summary>
internal sealed class FormatterLogger(JsonLinesFormatter formatter, string category, List<string> lines, bool keepNewline = false) : ILogger
{
    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> format)
    {
        var writer = new StringWriter();
        formatter.Write(new LogEntry<TState>(logLevel, category, eventId, state, exception, format), null, writer);
        lock (lines)
        {
            lines.Add(keepNewline ? writer.ToString() : writer.ToString().TrimEnd('\n'));
        }
    }
}

/// <summary>Lines exactly as the console gets them, newline included.</summary>
internal sealed class FormatterLoggerProvider(string service, List<string> lines) : ILoggerProvider
{
    readonly JsonLinesFormatter _formatter = FormatterLogging.Formatter(service);

    public ILogger CreateLogger(string categoryName) => new FormatterLogger(_formatter, categoryName, lines, keepNewline: true);

    public void Dispose()
    {
    }
}
