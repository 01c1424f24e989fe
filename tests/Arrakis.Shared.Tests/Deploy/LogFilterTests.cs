using System.Text.Json;
using System.Text.RegularExpressions;
using Arrakis.Shared.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace Arrakis.Shared.Tests.Deploy;

/// <summary>
/// Applies each CloudWatch log metric filter in deploy/terraform (JSON and space-delimited) to lines written by our
/// real <see cref="JsonLinesFormatter"/> from source-generated log messages, and checks what it matches and extracts.
/// </summary>
public sealed partial class LogFilterTests
{
    // Shaped like the services' messages (TokenVerifier's JWT_VALIDATION_FAILED is copied exactly).
    [LoggerMessage(EventId = 2001, EventName = "JWT_VALIDATION_FAILED", Level = LogLevel.Warning, Message = "JWT_VALIDATION_FAILED policy={Policy} reason={Reason}")]
    static partial void JwtFailed(ILogger logger, string policy, string reason);

    [LoggerMessage(EventId = 3001, EventName = "INVOKE_COMPLETE", Level = LogLevel.Information, Message = "INVOKE_COMPLETE community={CommunityId} pool={Pool} status={Status} duration_ms={DurationMs} cost_micro={CostMicro}")]
    static partial void InvokeComplete(ILogger logger, string communityId, string pool, string status, long durationMs, long costMicro);

    static partial class WithOutcome
    {
        [LoggerMessage(EventId = 3003, EventName = "INVOKE_COMPLETE", Level = LogLevel.Information, Message = "INVOKE_COMPLETE status={Status} outcome={Outcome} duration_ms={DurationMs}")]
        public static partial void InvokeComplete(ILogger logger, int status, string outcome, long durationMs);
    }

    static partial class Fractional
    {
        [LoggerMessage(EventId = 3002, EventName = "INVOKE_COMPLETE", Level = LogLevel.Information, Message = "INVOKE_COMPLETE in {DurationMs} ms")]
        public static partial void InvokeComplete(ILogger logger, double durationMs);
    }

    [LoggerMessage(EventId = 3100, EventName = "CONSERVATION_VIOLATION", Level = LogLevel.Critical, Message = "CONSERVATION_VIOLATION community={CommunityId} committed={Committed} reserved={Reserved} limit={Limit}")]
    static partial void ConservationViolation(ILogger logger, string communityId, long committed, long reserved, long limit);

    [LoggerMessage(EventId = 4001, EventName = "REPUTATION_QUERY", Level = LogLevel.Information, Message = "REPUTATION_QUERY nft={NftId} score={Score} reputation_duration_ms={ReputationDurationMs}")]
    static partial void ReputationQuery(ILogger logger, string nftId, double score, long reputationDurationMs);

    [LoggerMessage(EventId = 9001, EventName = "HTTP_REQUEST", Level = LogLevel.Information, Message = "GET {Path} answered {Status} in {DurationMs} ms")]
    static partial void OtherTimedEvent(ILogger logger, string path, int status, long durationMs);

    [LoggerMessage(EventId = 9002, Level = LogLevel.Information, Message = "Budget reservation refused: BUDGET_EXCEEDED for {CommunityId}")]
    static partial void Refused(ILogger logger, string communityId);

    static Dictionary<string, List<string>> RealLines()
    {
        var sp = new ServiceCollection().AddOptions().BuildServiceProvider();
        var lines = new Dictionary<string, List<string>>();
        foreach (var service in new[] { "freeside", "finn", "dixie" })
        {
            var list = new List<string>();
            var logger = new Hosting.FormatterLogger(Hosting.FormatterLogging.Formatter(service), "Arrakis." + service, list);
            JwtFailed(logger, "community", "token expired at 2026-11-27T00:00:00Z");
            OtherTimedEvent(logger, "/api/v1/x y", 200, 77);
            Refused(logger, "c-1");
            if (service == "freeside")
            {
                InvokeComplete(logger, "test-community-staging-001", "cheap", "ok", 1234, 560);
                Fractional.InvokeComplete(logger, 10500.25);
                WithOutcome.InvokeComplete(logger, 200, "ok", 812);
                WithOutcome.InvokeComplete(logger, 429, "rejected", 3); // refused before it ran: not an inference latency
                ConservationViolation(logger, "c-1", 900, 200, 1000);
            }

            if (service == "finn")
            {
                ReputationQuery(logger, "nft 42", 0.87, 567);
            }

            lines[service] = list;
        }

        sp.Dispose();
        return lines;
    }

    [Fact]
    public void Every_filter_matches_its_event_in_real_log_lines_and_extracts_the_logged_number()
    {
        var lines = RealLines();
        Assert.All(lines.Values.SelectMany(l => l), l => JsonDocument.Parse(l).Dispose());
        var filters = DeployFiles.Resources("aws_cloudwatch_log_metric_filter");
        Assert.Equal(8, filters.Count);
        var kinds = new HashSet<string>();

        foreach (var (name, body) in filters)
        {
            var pattern = body.GetProperty("pattern").GetString()!;
            var transform = body.GetProperty("metric_transformation")[0];
            var value = transform.GetProperty("value").GetString()!;
            var groupRef = body.GetProperty("log_group_name").GetString()!;
            var services = groupRef.Contains("each.key", StringComparison.Ordinal)
                ? Regex.Matches(body.GetProperty("for_each").GetString()!, "\"([a-z]+)\"").Select(m => m.Groups[1].Value).ToList()
                : [Regex.Match(groupRef, "service\\[\"([a-z]+)\"\\]").Groups[1].Value];
            Assert.NotEmpty(services);
            kinds.Add(pattern.StartsWith('{') ? "json" : pattern.StartsWith('[') ? "delimited" : "term");

            foreach (var service in services)
            {
                var results = lines[service].Select(l => (Line: l, Value: LogFilterPattern.Apply(pattern, value, l))).ToList();
                var matched = results.Where(r => r.Value is not null).ToList();
                var metric = transform.GetProperty("name").GetString()!;
                string expectedEvent = metric switch
                {
                    _ when metric.StartsWith("JwtValidationFailed", StringComparison.Ordinal) => "JWT_VALIDATION_FAILED",
                    _ when metric.StartsWith("ConservationViolation", StringComparison.Ordinal) => "CONSERVATION_VIOLATION",
                    _ when metric.StartsWith("InvokeLatency", StringComparison.Ordinal) => "INVOKE_COMPLETE",
                    _ when metric.StartsWith("ReputationQueryLatency", StringComparison.Ordinal) => "REPUTATION_QUERY",
                    _ => throw new InvalidOperationException("unexpected filter metric " + metric),
                };
                // The latency alarm's JSON form takes invokes with an outcome other than "rejected" (refused before they
                // ran); freeside's INVOKE_COMPLETE always carries one (InvokeLog), and a selector on a missing field
                // matches nothing.
                var excludesRefused = pattern.Contains("$.outcome != \"rejected\"", StringComparison.Ordinal);
                var expectedLines = lines[service].Where(l => JsonDocument.Parse(l).RootElement is var root
                    && root.TryGetProperty("event", out var e) && e.GetString() == expectedEvent
                    && (!excludesRefused || (root.TryGetProperty("outcome", out var o) && o.GetString() != "rejected"))).ToList();
                Assert.NotEmpty(expectedLines);
                Assert.True(
                    matched.Select(m => m.Line).SequenceEqual(expectedLines),
                    $"{name} ({pattern}) on {service} matched:\n{string.Join("\n", matched.Select(m => m.Line))}\nexpected:\n{string.Join("\n", expectedLines)}");

                foreach (var (line, extracted) in matched)
                {
                    var root = JsonDocument.Parse(line).RootElement;
                    double expected = value == "1" ? 1
                        : root.GetProperty(value.TrimStart('$').TrimStart('.')).GetDouble();
                    Assert.Equal(expected, extracted!.Value);
                    if (value != "1")
                    {
                        Assert.True(expected > 0);
                    }
                }
            }
        }

        Assert.Equal(["json", "delimited"], kinds.Order().Reverse().ToArray());
    }

    /// <summary>
    /// The p99 invoke latency alarm reads the JSON filter's InvokeLatencyMs: an invoke refused before it ran (429, 402, …,
    /// logged since every invoke logs INVOKE_COMPLETE) takes a few ms, and a flood of them pulled the statistic down
    /// and hid slow inference. The filter leaves them out, as the Prometheus rule's histogram does (calls that ran).
    /// </summary>
    [Fact]
    public void The_latency_alarms_filter_leaves_out_invokes_refused_before_they_ran()
    {
        var filter = DeployFiles.Resources("aws_cloudwatch_log_metric_filter").Single(f => f.Name == "invoke_latency_json").Body;
        var pattern = filter.GetProperty("pattern").GetString()!;
        var lines = RealLines()["freeside"].Where(l => l.Contains("INVOKE_COMPLETE status=", StringComparison.Ordinal)).ToList();
        Assert.Equal(2, lines.Count);
        Assert.Equal(812, LogFilterPattern.Apply(pattern, "$.duration_ms", lines.Single(l => l.Contains("\"outcome\":\"ok\"", StringComparison.Ordinal))));
        Assert.Null(LogFilterPattern.Apply(pattern, "$.duration_ms", lines.Single(l => l.Contains("\"outcome\":\"rejected\"", StringComparison.Ordinal))));
    }

    [Fact]
    public void Lines_never_contain_the_lowercase_conservation_term()
    {
        Assert.DoesNotContain(RealLines().Values.SelectMany(l => l), l => l.Contains("budget_exceeded", StringComparison.Ordinal));
    }
}

/// <summary>
/// The subset of CloudWatch Logs filter pattern syntax our filters use. JSON: <c>{ $.a = "X" &amp;&amp; $.b = * }</c>.
/// Space-delimited: <c>[f1 = "glob", ...]</c> or <c>[..., f1 = "glob", f2, f3 = "x"]</c>; fields are separated by spaces,
/// and a field that starts with <c>"</c> or <c>[</c> runs to the matching close.
/// </summary>
internal static partial class LogFilterPattern
{
    /// <summary>The metric value the filter publishes for <paramref name="line"/>, or null when it does not match.</summary>
    public static double? Apply(string pattern, string valueSpec, string line)
    {
        pattern = pattern.Trim();
        if (pattern.StartsWith('{'))
        {
            JsonElement root;
            try
            {
                root = JsonDocument.Parse(line).RootElement;
            }
            catch (JsonException)
            {
                return null;
            }

            foreach (var clause in pattern.Trim('{', '}', ' ').Split("&&"))
            {
                var m = JsonClause().Match(clause.Trim());
                Assert.True(m.Success, "unsupported JSON clause: " + clause);
                if (!root.TryGetProperty(m.Groups["field"].Value, out var field))
                {
                    return null;
                }

                var expected = m.Groups["value"].Value;
                var equal = field.ValueKind == JsonValueKind.String && field.GetString() == expected.Trim('"');
                if (m.Groups["op"].Value == "!=" ? expected == "*" || equal : expected != "*" && !equal)
                {
                    return null;
                }
            }

            if (valueSpec == "1")
            {
                return 1;
            }

            Assert.StartsWith("$.", valueSpec);
            return root.TryGetProperty(valueSpec[2..], out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : null;
        }

        Assert.True(pattern.StartsWith('[') && pattern.EndsWith(']'), "unsupported pattern: " + pattern);
        var fields = pattern[1..^1].Split(',').Select(f => f.Trim()).ToList();
        var tokens = Tokenize(line);
        List<(string Spec, string Token)> pairs;
        if (fields[0] == "...")
        {
            var rest = fields.Skip(1).ToList();
            if (tokens.Count < rest.Count)
            {
                return null;
            }

            pairs = rest.Zip(tokens.Skip(tokens.Count - rest.Count)).ToList();
        }
        else if (fields[^1] == "...")
        {
            var head = fields.Take(fields.Count - 1).ToList();
            if (tokens.Count < head.Count)
            {
                return null;
            }

            pairs = head.Zip(tokens).ToList();
        }
        else
        {
            if (tokens.Count != fields.Count)
            {
                return null;
            }

            pairs = fields.Zip(tokens).ToList();
        }

        var bound = new Dictionary<string, string>();
        foreach (var (spec, token) in pairs)
        {
            var m = DelimitedField().Match(spec);
            Assert.True(m.Success, "unsupported field: " + spec);
            bound[m.Groups["name"].Value] = token;
            if (m.Groups["value"].Success)
            {
                var glob = "^" + Regex.Escape(m.Groups["value"].Value.Trim('"')).Replace("\\*", ".*", StringComparison.Ordinal) + "$";
                if (!Regex.IsMatch(token, glob, RegexOptions.Singleline))
                {
                    return null;
                }
            }
        }

        if (valueSpec == "1")
        {
            return 1;
        }

        Assert.StartsWith("$", valueSpec);
        return bound.TryGetValue(valueSpec[1..], out var raw) && double.TryParse(raw, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var number)
            ? number
            : null;
    }

    static List<string> Tokenize(string line)
    {
        var tokens = new List<string>();
        var i = 0;
        while (i < line.Length)
        {
            while (i < line.Length && line[i] == ' ')
            {
                i++;
            }

            if (i >= line.Length)
            {
                break;
            }

            var start = i;
            if (line[i] is '"' or '[')
            {
                var close = line[i] == '"' ? '"' : ']';
                var end = line.IndexOf(close, i + 1);
                i = end < 0 ? line.Length : end + 1;
            }

            while (i < line.Length && line[i] != ' ')
            {
                i++;
            }

            tokens.Add(line[start..i]);
        }

        return tokens;
    }

    [GeneratedRegex("""^\$\.(?<field>[A-Za-z0-9_]+)\s*(?<op>!?=)\s*(?<value>\*|"[^"]*")$""")]
    private static partial Regex JsonClause();

    [GeneratedRegex("""^(?<name>[A-Za-z_][A-Za-z0-9_]*)(?:\s*=\s*(?<value>"[^"]*"))?$""")]
    private static partial Regex DelimitedField();
}
