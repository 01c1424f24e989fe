using System.Text;
using System.Text.Json;

namespace Arrakis.Cli.Gate;

internal static class GateStatus
{
    public const string Pass = "PASS";
    public const string Fail = "FAIL";
    public const string Skip = "SKIP";
}

/// <summary>SDD §10.2 failure classes; <see cref="None"/> is the empty string.</summary>
internal static class GateClass
{
    public const string None = "";
    public const string PlatformBug = "PLATFORM_BUG";
    public const string ExternalOutage = "EXTERNAL_OUTAGE";
    public const string Flake = "FLAKE";
}

/// <summary>One <c>record &lt;priority&gt; &lt;phase&gt; &lt;name&gt; &lt;status&gt; &lt;class&gt; &lt;elapsed_ms&gt; [detail]</c> call.</summary>
internal sealed record GateRecord(string Priority, string Phase, string Name, string Status, string Classification, long ElapsedMs, string Detail)
{
    /// <summary>The console line exactly as the smoke script prints it.</summary>
    public string ConsoleLine => Status switch
    {
        GateStatus.Pass => $"  PASS  [{Priority}] {Name} ({ElapsedMs}ms)",
        GateStatus.Fail => $"  FAIL  [{Priority}] {Name} ({ElapsedMs}ms) — {Classification}{(Detail.Length > 0 ? ": " + Detail : "")}",
        _ => $"  SKIP  [{Priority}] {Name}{(Detail.Length > 0 ? " — " + Detail : "")}",
    };
}

/// <summary>Counters, console output and the JSON document (§2.3, §2.4).</summary>
internal sealed class GateReport(TextWriter output, bool terminal)
{
    readonly List<GateRecord> _records = [];
    readonly Lock _lock = new();

    public IReadOnlyList<GateRecord> Records
    {
        get
        {
            lock (_lock)
            {
                return [.. _records];
            }
        }
    }

    public bool Terminal => terminal;

    public int Count(string priority, string status) => Records.Count(r => r.Priority == priority && r.Status == status);

    public int ExitCode => Count("P0", GateStatus.Fail) > 0 ? 1 : Count("P1", GateStatus.Fail) > 0 ? 2 : 0;

    public GateRecord Record(string priority, string phase, string name, string status, string classification, long elapsedMs, string detail = "")
    {
        var record = new GateRecord(priority, phase, name, status, classification, elapsedMs, detail);
        lock (_lock)
        {
            _records.Add(record);
            output.WriteLine(terminal ? Colour(record) : record.ConsoleLine);
        }

        return record;
    }

    public GateRecord Pass(string priority, string phase, string name, long ms, string classification = GateClass.None) =>
        Record(priority, phase, name, GateStatus.Pass, classification, ms);

    public GateRecord Fail(string priority, string phase, string name, string classification, long ms, string detail) =>
        Record(priority, phase, name, GateStatus.Fail, classification, ms, detail);

    public GateRecord Skip(string priority, string phase, string name, long ms, string detail) =>
        Record(priority, phase, name, GateStatus.Skip, GateClass.None, ms, detail);

    /// <summary>An informational line (step progress, warnings); never on stderr so <c>--json</c> stays parseable.</summary>
    public void Line(string text = "")
    {
        lock (_lock)
        {
            output.WriteLine(text);
        }
    }

    /// <summary>A per-phase progress line, shown only on a terminal.</summary>
    public void Progress(int index, int total, string title)
    {
        if (!terminal)
        {
            return;
        }

        lock (_lock)
        {
            output.WriteLine($"\u001b[36m▶ [{index}/{total}] {title}\u001b[0m");
        }
    }

    public void WriteSummary()
    {
        Line("================================================================");
        Line("  Summary");
        Line("================================================================");
        Line();
        Line($"  P0: {Count("P0", GateStatus.Pass)} pass, {Count("P0", GateStatus.Fail)} fail, {Count("P0", GateStatus.Skip)} skip");
        Line($"  P1: {Count("P1", GateStatus.Pass)} pass, {Count("P1", GateStatus.Fail)} fail, {Count("P1", GateStatus.Skip)} skip");
        Line();
    }

    public void WriteResult()
    {
        Line(ExitCode switch
        {
            1 => "  Result: FAIL (P0 — deployment broken)",
            2 => "  Result: DEGRADED (P1 only — functional but impaired)",
            _ => "  Result: PASS",
        });
        Line();
        Line("================================================================");
    }

    /// <summary>The §2.4 document: timestamp, URLs, counters, exit code and every record in order.</summary>
    public string ToJson(DateTimeOffset now, string freesideUrl, string dixieUrl)
    {
        using var stream = new MemoryStream();
        using (var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteString("timestamp", now.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", System.Globalization.CultureInfo.InvariantCulture));
            json.WriteString("freeside_url", freesideUrl);
            json.WriteString("dixie_url", dixieUrl);
            foreach (var priority in new[] { "P0", "P1" })
            {
                json.WriteStartObject(priority.ToLowerInvariant());
                json.WriteNumber("pass", Count(priority, GateStatus.Pass));
                json.WriteNumber("fail", Count(priority, GateStatus.Fail));
                json.WriteNumber("skip", Count(priority, GateStatus.Skip));
                json.WriteEndObject();
            }

            json.WriteNumber("exit_code", ExitCode);
            json.WriteStartArray("results");
            foreach (var r in Records)
            {
                json.WriteStartObject();
                json.WriteString("priority", r.Priority);
                json.WriteString("phase", r.Phase);
                json.WriteString("name", r.Name);
                json.WriteString("status", r.Status);
                json.WriteString("classification", r.Classification);
                json.WriteNumber("elapsed_ms", r.ElapsedMs);
                json.WriteString("detail", r.Detail);
                json.WriteEndObject();
            }

            json.WriteEndArray();
            json.WriteEndObject();
        }

        return Encoding.UTF8.GetString(stream.ToArray());
    }

    static string Colour(GateRecord record)
    {
        var line = record.ConsoleLine;
        var colour = record.Status switch { GateStatus.Pass => "32", GateStatus.Fail => "31", _ => "33" };
        return $"  \u001b[{colour}m{record.Status}\u001b[0m{line[(2 + record.Status.Length)..]}";
    }
}
