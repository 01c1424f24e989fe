using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Logging.Console;
using Microsoft.Extensions.Options;

namespace Arrakis.Shared.Hosting;

public sealed class JsonLinesFormatterOptions : ConsoleFormatterOptions
{
    public string Service { get; set; } = "arrakis";
}

/// <summary>
/// Writes one JSON object per line with <c>timestamp, level, service, event, message</c> and every structured
/// property as a top-level snake_case field, so CloudWatch JSON filters can read <c>$.duration_ms</c>.
/// </summary>
public sealed class JsonLinesFormatter : ConsoleFormatter
{
    public const string FormatterName = "arrakis-json";
    readonly IOptionsMonitor<JsonLinesFormatterOptions> _options;

    public JsonLinesFormatter(IOptionsMonitor<JsonLinesFormatterOptions> options)
        : base(FormatterName) => _options = options;

    public override void Write<TState>(in LogEntry<TState> logEntry, IExternalScopeProvider? scopeProvider, TextWriter textWriter)
    {
        var message = logEntry.Formatter(logEntry.State, logEntry.Exception);
        (string Name, object Value)? trailing = null;
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("timestamp", DateTimeOffset.UtcNow.ToString("yyyy-MM-ddTHH:mm:ss.fffZ", System.Globalization.CultureInfo.InvariantCulture));
            json.WriteString("level", Level(logEntry.LogLevel));
            json.WriteString("service", _options.CurrentValue.Service);
            var written = new HashSet<string>(StringComparer.Ordinal) { "timestamp", "level", "service", "message", "category" };
            if (!string.IsNullOrEmpty(logEntry.EventId.Name))
            {
                json.WriteString("event", logEntry.EventId.Name);
                written.Add("event");
            }

            json.WriteString("category", logEntry.Category);
            json.WriteString("message", message);
            if (logEntry.State is IReadOnlyList<KeyValuePair<string, object?>> props)
            {
                foreach (var (key, value) in props)
                {
                    if (key == "{OriginalFormat}")
                    {
                        continue;
                    }

                    var name = SnakeCase(key);
                    if (trailing is null && IsNumber(value) && TrailingFields.TryGetValue(logEntry.EventId.Name ?? string.Empty, out var field) && field == name && written.Add(name))
                    {
                        trailing = (name, value!);
                    }
                    else if (written.Add(name))
                    {
                        WriteValue(json, name, value);
                    }
                }
            }

            scopeProvider?.ForEachScope((scope, w) =>
            {
                if (scope is IEnumerable<KeyValuePair<string, object?>> sp)
                {
                    foreach (var (key, value) in sp)
                    {
                        var name = SnakeCase(key);
                        if (written.Add(name))
                        {
                            WriteValue(w, name, value);
                        }
                    }
                }
            }, json);

            if (logEntry.Exception is { } ex)
            {
                json.WriteString("exception", ex.GetType().FullName + ": " + ex.Message);
            }

            json.WriteEndObject();
        }

        // A caller-chosen value (a token's kid, a routing key, a rating's source) may spell the conservation filter's
        // term; its underscore is written as the JSON escape \u005F, so the line reads the same to a JSON parser.
        var line = Encoding.UTF8.GetString(buffer.ToArray()).Replace(ConservationTerm, EscapedConservationTerm, StringComparison.Ordinal);
        if (trailing is { } t)
        {
            // Still one valid JSON object, but the latency is also a space-delimited token before a lone "}", so
            // the CloudWatch space-delimited filter [..., key = "*duration_ms*", duration_ms, end = "}"] reads it.
            line = line[..^1] + ",\"" + t.Name + "\": " + Number(t.Value) + " }";
        }

        textWriter.Write(line);
        textWriter.Write('\n');
    }

    /// <summary>
    /// The lowercase term the conservation log filter counts as a violation (DESIGN §8): no line may contain it as text.
    /// Inside a JSON line it can only stand in a string, where <c>\u005F</c> is the same underscore.
    /// </summary>
    internal const string ConservationTerm = "budget_exceeded";
    const string EscapedConservationTerm = "budget\\u005Fexceeded";

    /// <summary>The latency field of each DESIGN §8 latency event, written last as <c>"name": 123 }</c> (deploy/terraform/monitoring.tf).</summary>
    internal static readonly IReadOnlyDictionary<string, string> TrailingFields = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["INVOKE_COMPLETE"] = "duration_ms",
        ["REPUTATION_QUERY"] = "reputation_duration_ms",
    };

    static bool IsNumber(object? value) => value is int or long or double or float or decimal;

    static string Number(object value) => value switch
    {
        double d => Math.Round(d, 3).ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        float f => Math.Round(f, 3).ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        _ => Convert.ToString(value, System.Globalization.CultureInfo.InvariantCulture)!,
    };

    static void WriteValue(Utf8JsonWriter json, string name, object? value)
    {
        switch (value)
        {
            case null: json.WriteNull(name); break;
            case bool b: json.WriteBoolean(name, b); break;
            case int i: json.WriteNumber(name, i); break;
            case long l: json.WriteNumber(name, l); break;
            case double d: json.WriteNumber(name, Math.Round(d, 3)); break;
            case float f: json.WriteNumber(name, Math.Round(f, 3)); break;
            case decimal m: json.WriteNumber(name, m); break;
            default: json.WriteString(name, Convert.ToString(value, System.Globalization.CultureInfo.InvariantCulture)); break;
        }
    }

    static string Level(LogLevel level) => level switch
    {
        LogLevel.Trace => "trace",
        LogLevel.Debug => "debug",
        LogLevel.Information => "info",
        LogLevel.Warning => "warn",
        LogLevel.Error => "error",
        LogLevel.Critical => "fatal",
        _ => "none",
    };

    public static string SnakeCase(string name)
    {
        if (name.Length == 0 || (name.Contains('_', StringComparison.Ordinal) && !name.Any(char.IsUpper)))
        {
            return name;
        }

        var sb = new StringBuilder(name.Length + 8);
        for (var i = 0; i < name.Length; i++)
        {
            var c = name[i];
            if (char.IsUpper(c))
            {
                if (i > 0 && (char.IsLower(name[i - 1]) || (i + 1 < name.Length && char.IsLower(name[i + 1]) && char.IsUpper(name[i - 1]))))
                {
                    sb.Append('_');
                }

                sb.Append(char.ToLowerInvariant(c));
            }
            else
            {
                sb.Append(c);
            }
        }

        return sb.ToString();
    }
}
