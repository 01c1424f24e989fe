using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace Arrakis.Testing;

/// <summary>A logger provider that keeps every entry, to assert on log tokens such as JWT_VALIDATION_FAILED.</summary>
public sealed class RecordingLoggerProvider : ILoggerProvider
{
    public ConcurrentQueue<RecordedLog> Entries { get; } = new();

    public ILogger CreateLogger(string categoryName) => new RecordingLogger(categoryName, this);

    public ILogger<T> CreateLogger<T>() => new Typed<T>(CreateLogger(typeof(T).FullName!));

    public void Dispose()
    {
    }

    public IEnumerable<RecordedLog> WithEvent(string eventName) => Entries.Where(e => e.EventName == eventName);

    sealed class RecordingLogger(string category, RecordingLoggerProvider owner) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            var props = state as IReadOnlyList<KeyValuePair<string, object?>> ?? [];
            owner.Entries.Enqueue(new RecordedLog(category, logLevel, eventId.Name, formatter(state, exception), props.ToDictionary(p => p.Key, p => p.Value)));
        }
    }

    sealed class Typed<T>(ILogger inner) : ILogger<T>
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => inner.BeginScope(state);

        public bool IsEnabled(LogLevel logLevel) => inner.IsEnabled(logLevel);

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            inner.Log(logLevel, eventId, state, exception, formatter);
    }
}

public sealed record RecordedLog(string Category, LogLevel Level, string? EventName, string Message, IReadOnlyDictionary<string, object?> Properties);
