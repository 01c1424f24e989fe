using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Unicode;

namespace Arrakis.Shared.Http;

/// <summary>Why a JSON body was refused: the field (a path such as <c>messages[0].content</c>) and a human detail naming it.</summary>
public sealed record JsonTextError(string Field, string Detail);

/// <summary>
/// Checks that parsed JSON is text we can keep. System.Text.Json parses strings holding invalid UTF-8 or a lone UTF-16
/// surrogate (<c>"\ud800"</c>) and only fails when one is read (or, through JsonNode, silently swaps in U+FFFD), and
/// PostgreSQL refuses such text; so every body is checked once, before any field is read.
/// </summary>
public static class JsonText
{
    /// <summary>The path of the first string or property name that is not valid Unicode text, or null when all are.</summary>
    public static string? FindInvalid(JsonElement element) => Path(FirstInvalid(element));

    /// <summary>
    /// True when no object repeats a property name; otherwise <paramref name="duplicate"/> is the repeated property's path.
    /// Call it after <see cref="FindInvalid(JsonElement)"/>: it reads the names.
    /// </summary>
    public static bool UniqueNames(JsonElement element, [NotNullWhen(false)] out string? duplicate)
    {
        duplicate = Path(FirstDuplicate(element));
        return duplicate is null;
    }

    /// <summary>Both checks, with the answer a route gives: null when the body is good text with unique names.</summary>
    public static JsonTextError? Check(JsonElement root)
    {
        if (FindInvalid(root) is { } invalid)
        {
            return new JsonTextError(invalid, $"{invalid} is not valid text: it holds invalid UTF-8, a lone UTF-16 surrogate (such as \\ud800) or a NUL (\\u0000).");
        }

        return UniqueNames(root, out var duplicate)
            ? null
            : new JsonTextError(duplicate, $"{duplicate} appears more than once; send each property once.");
    }

    // Both walks return the path below the element ("" for the element itself), built only on the way back from a find.
    static string? FirstInvalid(JsonElement element)
    {
        switch (element.ValueKind)
        {
            case JsonValueKind.String:
                return IsText(JsonMarshal.GetRawUtf8Value(element)[1..^1]) ? null : ""; // the raw value keeps its quotes
            case JsonValueKind.Array:
                var i = 0;
                foreach (var item in element.EnumerateArray())
                {
                    if (FirstInvalid(item) is { } below)
                    {
                        return Index(i) + below;
                    }

                    i++;
                }

                return null;
            case JsonValueKind.Object:
                foreach (var property in element.EnumerateObject())
                {
                    if (!IsText(JsonMarshal.GetRawUtf8PropertyName(property)))
                    {
                        return ""; // a name that is not text cannot be shown: the object that holds it
                    }

                    if (FirstInvalid(property.Value) is { } below)
                    {
                        return Member(property.Name) + below;
                    }
                }

                return null;
            default:
                return null;
        }
    }

    static string? FirstDuplicate(JsonElement element)
    {
        switch (element.ValueKind)
        {
            case JsonValueKind.Array:
                var i = 0;
                foreach (var item in element.EnumerateArray())
                {
                    if (FirstDuplicate(item) is { } below)
                    {
                        return Index(i) + below;
                    }

                    i++;
                }

                return null;
            case JsonValueKind.Object:
                HashSet<string>? seen = null;
                foreach (var property in element.EnumerateObject())
                {
                    seen ??= new HashSet<string>(StringComparer.Ordinal);
                    if (!seen.Add(property.Name))
                    {
                        return Member(property.Name);
                    }

                    if (FirstDuplicate(property.Value) is { } below)
                    {
                        return Member(property.Name) + below;
                    }
                }

                return null;
            default:
                return null;
        }
    }

    static string? Path(string? below) => below switch
    {
        null => null,
        "" => "body",
        ['.', .. var rest] => rest,
        _ => below,
    };

    static string Index(int i) => "[" + i.ToString(CultureInfo.InvariantCulture) + "]";

    static string Member(string name) =>
        name.Length > 0 && name.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-')
            ? "." + name
            : "['" + name.Replace("'", "\\'", StringComparison.Ordinal) + "']";

    /// <summary>
    /// Raw (still escaped) JSON string bytes are text when they are valid UTF-8, every <c>\u</c> escape of a surrogate
    /// is half of a high-low pair, and none is <c>\u0000</c> (PostgreSQL's text cannot hold a NUL; a raw NUL byte is not
    /// valid JSON). The document was parsed, so every escape is well formed.
    /// </summary>
    static bool IsText(ReadOnlySpan<byte> raw)
    {
        if (!Utf8.IsValid(raw))
        {
            return false;
        }

        var i = raw.IndexOf((byte)'\\');
        while (i >= 0)
        {
            if (raw[i + 1] != (byte)'u')
            {
                i += 2;
            }
            else
            {
                var unit = Hex4(raw.Slice(i + 2, 4));
                i += 6;
                if (unit == '\0' || char.IsLowSurrogate(unit))
                {
                    return false;
                }

                if (char.IsHighSurrogate(unit))
                {
                    if (i + 6 > raw.Length || raw[i] != (byte)'\\' || raw[i + 1] != (byte)'u' || !char.IsLowSurrogate(Hex4(raw.Slice(i + 2, 4))))
                    {
                        return false;
                    }

                    i += 6;
                }
            }

            var next = raw[i..].IndexOf((byte)'\\');
            i = next < 0 ? -1 : i + next;
        }

        return true;
    }

    static char Hex4(ReadOnlySpan<byte> hex) =>
        (char)ushort.Parse(hex, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture);
}
