/// <summary>
/// docs/benchmarks.md holds one section per benchmark between HTML comment markers. A run rewrites only its own section,
/// and keeps the hand-written reading (between the reading markers) of the previous run.
/// </summary>
static class BenchmarkDoc
{
    public static string Start(string name) => $"<!-- bench:{name}:start (written by Arrakis.Bench {name} --out) -->";

    public static string End(string name) => $"<!-- bench:{name}:end -->";

    static string ReadingStart(string name) => $"<!-- bench:{name}:reading:start (kept across runs) -->";

    static string ReadingEnd(string name) => $"<!-- bench:{name}:reading:end -->";

    /// <summary>The reading block a fresh section carries; an existing reading replaces it.</summary>
    public static string Reading(string name) =>
        $"{ReadingStart(name)}\n(Write what bounds these numbers here; the benchmark keeps this part when it rewrites the table.)\n{ReadingEnd(name)}";

    /// <summary>Writes <paramref name="body"/> (which contains <see cref="Reading"/>) as the section <paramref name="name"/> of <paramref name="path"/>.</summary>
    public static void Write(string path, string name, string body)
    {
        var doc = File.Exists(path) ? File.ReadAllText(path) : "# Benchmarks\n";
        var section = $"{Start(name)}\n{body.Trim()}\n{End(name)}";
        var start = doc.IndexOf(Start(name), StringComparison.Ordinal);
        var end = doc.IndexOf(End(name), StringComparison.Ordinal);
        if (start < 0 || end < start)
        {
            File.WriteAllText(path, doc.TrimEnd() + "\n\n" + section + "\n");
            return;
        }

        var old = doc[start..(end + End(name).Length)];
        var (rs, re) = (ReadingStart(name), ReadingEnd(name));
        var oldStart = old.IndexOf(rs, StringComparison.Ordinal);
        var oldEnd = old.IndexOf(re, StringComparison.Ordinal);
        var freshStart = section.IndexOf(rs, StringComparison.Ordinal);
        var freshEnd = section.IndexOf(re, StringComparison.Ordinal);
        if (oldStart >= 0 && oldEnd > oldStart && freshStart >= 0 && freshEnd > freshStart)
        {
            section = section[..freshStart] + old[oldStart..(oldEnd + re.Length)] + section[(freshEnd + re.Length)..];
        }

        File.WriteAllText(path, doc[..start] + section + doc[(end + End(name).Length)..]);
    }
}
