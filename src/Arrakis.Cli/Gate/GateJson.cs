using System.Text.Json;

namespace Arrakis.Cli.Gate;

/// <summary>
/// The jq expressions the smoke script used, with its abort hazards (§2.7) turned into explicit problems:
/// a 2xx body that is not JSON, or JSON that is not an object, or a budget number that is not an integer.
/// </summary>
internal static class GateJson
{
    /// <summary>Parses a 2xx body that must be a JSON object; returns null and a problem description otherwise.</summary>
    public static JsonElement? Object(string body, out string? problem)
    {
        problem = null;
        if (string.IsNullOrWhiteSpace(body))
        {
            problem = "2xx response with an empty body (expected a JSON object)";
            return null;
        }

        JsonElement root;
        try
        {
            using var doc = JsonDocument.Parse(body);
            root = doc.RootElement.Clone();
        }
        catch (JsonException)
        {
            problem = $"2xx response is not JSON: {Snippet(body)}";
            return null;
        }

        if (root.ValueKind != JsonValueKind.Object)
        {
            problem = $"2xx response is a JSON {root.ValueKind.ToString().ToLowerInvariant()}, not an object: {Snippet(body)}";
            return null;
        }

        return root;
    }

    /// <summary>jq <c>.a // .b</c>: the first member that exists and is neither null nor false.</summary>
    public static JsonElement? Alt(JsonElement obj, params string[] path)
    {
        foreach (var name in path)
        {
            var current = obj;
            var found = true;
            foreach (var part in name.Split('.'))
            {
                if (current.ValueKind != JsonValueKind.Object || !current.TryGetProperty(part, out current))
                {
                    found = false;
                    break;
                }
            }

            if (found && current.ValueKind is not (JsonValueKind.Null or JsonValueKind.False or JsonValueKind.Undefined))
            {
                return current;
            }
        }

        return null;
    }

    /// <summary>jq <c>-r</c> rendering of a value.</summary>
    public static string Render(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.String => value.GetString()!,
        JsonValueKind.Number or JsonValueKind.True or JsonValueKind.False or JsonValueKind.Null => value.GetRawText(),
        _ => JsonSerializer.Serialize(value),
    };

    public static bool Has(JsonElement obj, string name) => obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(name, out _);

    public static string Snippet(string body)
    {
        var flat = body.ReplaceLineEndings(" ").Trim();
        return flat.Length <= 60 ? $"\"{flat}\"" : $"\"{flat[..57]}...\"";
    }
}

/// <summary>One budget read: <c>.monthlyBudgetCents // 0</c>, <c>.committed // .spentCents // 0</c>, <c>.reserved // 0</c>.</summary>
internal sealed record BudgetReading(long MonthlyBudgetCents, long Committed, long Reserved)
{
    public long Total => Committed + Reserved;

    /// <summary>Parses a budget body; integer cents only (the original's <c>$(( ))</c> died on floats and strings).</summary>
    public static BudgetReading? Parse(string body, out string? problem)
    {
        if (GateJson.Object(body, out problem) is not { } obj)
        {
            return null;
        }

        string? found = null;
        long Read(params string[] names)
        {
            foreach (var name in names)
            {
                if (GateJson.Alt(obj, name) is not { } value)
                {
                    continue;
                }

                if (value.ValueKind == JsonValueKind.Number && value.TryGetInt64(out var cents))
                {
                    return cents;
                }

                found ??= $"budget field '{name}' is not an integer: {value.GetRawText()}";
                return 0;
            }

            return 0;
        }

        var reading = new BudgetReading(Read("monthlyBudgetCents"), Read("committed", "spentCents"), Read("reserved"));
        problem = found;
        return found is null ? reading : null;
    }
}
