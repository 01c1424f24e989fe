using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Http;
using Microsoft.AspNetCore.Http;

namespace Arrakis.Dixie.Reputation;

/// <summary>
/// Strict parsing of <c>POST /api/reputation/events</c>: every problem names its field. <c>score</c> is a number in
/// [0, 1] or a quality label (<c>quality</c> is accepted as an alias); <c>timestamp</c> is an RFC 3339 date-time with an
/// offset or unix ms (scores decay from it). <c>model</c> and <c>pool</c> are taken without surrounding whitespace, so a
/// rating counts for the model id finn routes by.
/// Unknown fields are rejected so that typos do not silently drop data.
/// </summary>
public static partial class EventParser
{
    static readonly HashSet<string> Known = ["event_id", "routing_key", "score", "quality", "source", "model", "pool", "trace_id", "timestamp"];

    [GeneratedRegex(@"^[A-Za-z0-9._:-]{1,128}\z", RegexOptions.CultureInvariant)]
    private static partial Regex IdPattern();

    // RFC 3339 date-time: a full date and time with an offset ('T' or a space between them, as RFC 3339 allows).
    [GeneratedRegex(@"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})\z", RegexOptions.CultureInvariant)]
    private static partial Regex Rfc3339Pattern();

    /// <summary>
    /// The earliest timestamp taken (1973-03-03, in either form): a unix time in seconds (about 1.8e9 today) is below it,
    /// and so are the zero values of a date a client never set (1970-01-01, 0001-01-01); each would otherwise read as a
    /// rating made decades ago and carry no weight once decayed from then, while counting as a sample.
    /// </summary>
    public const long MinTimestampMs = 100_000_000_000;

    public static (ReputationEvent? Event, IResult? Problem) Parse(JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object)
        {
            return Fail("body", "The body must be a JSON object.");
        }

        if (JsonText.Check(root) is { } text)
        {
            return Fail(text.Field, text.Detail);
        }

        foreach (var p in root.EnumerateObject())
        {
            if (!Known.Contains(p.Name))
            {
                return Fail(p.Name, $"Unknown field '{p.Name}'. Allowed: {string.Join(", ", Known)}.");
            }
        }

        if (!TryString(root, "event_id", required: true, 128, out var eventId, out var problem) || !IdPattern().IsMatch(eventId!))
        {
            return (null, problem ?? Problems.Invalid("event_id", "event_id must be 1-128 characters of letters, digits, '.', '_', ':' or '-'."));
        }

        if (!TryString(root, "routing_key", required: true, RoutingKey.MaxLength, out var key, out problem) || !RoutingKey.IsValid(key))
        {
            return (null, problem ?? Problems.Invalid("routing_key", "routing_key must be " + RoutingKey.Shape + "."));
        }

        key = RoutingKey.Canonical(key);

        var hasScore = root.TryGetProperty("score", out var scoreEl) && scoreEl.ValueKind != JsonValueKind.Null;
        var hasQuality = root.TryGetProperty("quality", out var qualityEl) && qualityEl.ValueKind != JsonValueKind.Null;
        if (hasScore && hasQuality)
        {
            return Fail("score", "Send either score or quality, not both.");
        }

        if (!hasScore && !hasQuality)
        {
            return Fail("score", "score is required: a number within [0, 1] or one of bad, poor, fair, good, excellent.");
        }

        var field = hasScore ? "score" : "quality";
        var (score, scoreProblem) = ParseScore(hasScore ? scoreEl : qualityEl, field);
        if (scoreProblem is not null)
        {
            return (null, scoreProblem);
        }

        if (!TryString(root, "source", required: true, 64, out var source, out problem))
        {
            return (null, problem);
        }

        if (!TryString(root, "model", required: false, PoolCatalog.MaxModelIdLength, out var model, out problem)
            || !TryString(root, "pool", required: false, PoolCatalog.MaxPoolIdLength, out var pool, out problem)
            || !TryString(root, "trace_id", required: false, 128, out var traceId, out problem))
        {
            return (null, problem);
        }

        // A model's score is keyed by its id, which finn looks up exactly: " local-mini-a " would get a score of its own,
        // shown by the query route and never read by routing, while the model finn routes by never saw the rating.
        model = model?.Trim();
        pool = pool?.Trim();

        if (!root.TryGetProperty("timestamp", out var ts) || ts.ValueKind == JsonValueKind.Null)
        {
            return Fail("timestamp", "timestamp is required (RFC 3339 string or unix milliseconds).");
        }

        // Scores decay from this instant, so it must name one: RFC 3339 with its offset, or unix milliseconds (not seconds).
        long occurred;
        if (ts.ValueKind == JsonValueKind.Number && ts.TryGetInt64(out var ms) && ms >= MinTimestampMs)
        {
            occurred = ms;
        }
        else if (ts.ValueKind == JsonValueKind.String && Rfc3339Pattern().IsMatch(ts.GetString()!)
            && DateTimeOffset.TryParse(ts.GetString(), CultureInfo.InvariantCulture, DateTimeStyles.None, out var dto)
            && dto.ToUnixTimeMilliseconds() >= MinTimestampMs)
        {
            occurred = dto.ToUnixTimeMilliseconds();
        }
        else
        {
            return Fail("timestamp",
                "timestamp must be an RFC 3339 date-time with an offset (2026-03-04T10:00:00Z) or unix milliseconds (such as 1772618400000; not seconds), from 1973-03-03 on.");
        }

        return (new ReputationEvent(eventId!, key!, score, source!, model, pool, traceId, occurred), null);
    }

    /// <summary>A number within [0, 1] or a quality label; shared with the parsing of quality labels elsewhere.</summary>
    public static (double Score, IResult? Problem) ParseScore(JsonElement el, string field)
    {
        if (el.ValueKind == JsonValueKind.Number)
        {
            var v = el.GetDouble();
            return v is >= 0 and <= 1 ? (v, null) : (0, Problems.Invalid(field, $"{field} must be within [0, 1]."));
        }

        if (el.ValueKind == JsonValueKind.String && ReputationMath.LabelScore(el.GetString()!) is { } labelled)
        {
            return (labelled, null);
        }

        return (0, Problems.Invalid(field, $"{field} must be a number within [0, 1] or one of {string.Join(", ", ReputationMath.Labels)}."));
    }

    static bool TryString(JsonElement root, string name, bool required, int max, out string? value, out IResult? problem)
    {
        value = null;
        problem = null;
        if (!root.TryGetProperty(name, out var el) || el.ValueKind == JsonValueKind.Null)
        {
            if (required)
            {
                problem = Problems.Invalid(name, $"{name} is required.");
                return false;
            }

            return true;
        }

        if (el.ValueKind != JsonValueKind.String)
        {
            problem = Problems.Invalid(name, $"{name} must be a string.");
            return false;
        }

        value = el.GetString()!;
        // Blank is as empty: a source or model of spaces names nothing (and a model of spaces would get its own score).
        if (string.IsNullOrWhiteSpace(value) || value.Length > max || value.Any(char.IsControl))
        {
            problem = Problems.Invalid(name, $"{name} must be 1-{max} printable characters, not all spaces.");
            return false;
        }

        return true;
    }

    static (ReputationEvent?, IResult?) Fail(string field, string detail) => (null, Problems.Invalid(field, detail));
}
