using System.Collections.Concurrent;
using System.Diagnostics;
using Arrakis.Freeside.Ledger;

/// <summary>
/// Where a freeside call's time goes. While it is alive, an <see cref="ActivityListener"/> records the activities of
/// HttpClient (the bench client's call to freeside, and freeside's call to finn), ASP.NET Core (each service's handling of
/// a request), the ledger (<see cref="Ledger.ActivitySourceName"/>) and Npgsql (each database round trip); the spans of one
/// call share its trace id and are joined by parent span. Listening costs time itself, so this is measured apart from the
/// main table, and its totals run a little above the table's.
/// </summary>
sealed class CallBreakdown : IDisposable
{
    readonly record struct Span(string Source, string Operation, string? Url, ActivitySpanId Id, ActivitySpanId Parent, double Ms);

    readonly ConcurrentDictionary<ActivityTraceId, ConcurrentQueue<Span>> _calls = new();
    readonly ActivityListener _listener;

    public CallBreakdown()
    {
        _listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name is "System.Net.Http" or "Microsoft.AspNetCore" or "Npgsql" or Ledger.ActivitySourceName,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = a => _calls.GetOrAdd(a.TraceId, _ => new()).Enqueue(
                new Span(a.Source.Name, a.OperationName, a.GetTagItem("url.full") as string, a.SpanId, a.ParentSpanId, a.Duration.TotalMilliseconds)),
        };
        ActivitySource.AddActivityListener(_listener);
    }

    public void Clear() => _calls.Clear();

    public void Dispose() => _listener.Dispose();

    /// <summary>One row per part: its median and p99 over the calls whose spans were all seen, and how many calls that was.</summary>
    public (List<(string Part, double P50, double P99)> Rows, int Calls, double RoundTrips) Summarize()
    {
        var parts = new Dictionary<string, List<double>>();
        var roundTrips = new List<double>();
        void Add(string part, double ms) => (parts.TryGetValue(part, out var l) ? l : parts[part] = []).Add(ms);
        var complete = 0;
        foreach (var spans in _calls.Values.Select(q => q.ToArray()))
        {
            var client = spans.FirstOrDefault(s => s.Source == "System.Net.Http" && s.Url?.Contains("/api/agents/invoke", StringComparison.Ordinal) == true);
            var finnCall = spans.FirstOrDefault(s => s.Source == "System.Net.Http" && s.Url?.Contains("/api/v1/invoke", StringComparison.Ordinal) == true);
            var freeside = spans.FirstOrDefault(s => s.Source == "Microsoft.AspNetCore" && s.Parent == client.Id);
            var finn = spans.FirstOrDefault(s => s.Source == "Microsoft.AspNetCore" && s.Parent == finnCall.Id);
            var reserve = spans.Where(s => s.Operation == "ledger.reserve").Sum(s => s.Ms);
            var finalize = spans.Where(s => s.Operation == "ledger.finalize").Sum(s => s.Ms);
            if (client.Source is null || finnCall.Source is null || freeside.Source is null || finn.Source is null || reserve == 0 || finalize == 0)
            {
                continue; // a call cut by the start or end of the window, or one whose spans are still arriving
            }

            complete++;
            Add("whole call, at the client", client.Ms);
            Add("HTTP between client and freeside (both ways)", client.Ms - freeside.Ms);
            Add("ledger: reserve with the key claim", reserve);
            Add("ledger: finalize with the usage record and stored response", finalize);
            Add("freeside's call to finn, as freeside sees it", finnCall.Ms);
            Add("· HTTP between freeside and finn (both ways)", finnCall.Ms - finn.Ms);
            Add("· inside finn (token check, routing, local provider, metering)", finn.Ms);
            Add("freeside's own work (auth, rate limit, parsing, finn token, response, log)", freeside.Ms - reserve - finalize - finnCall.Ms);
            roundTrips.Add(spans.Count(s => s.Source == "Npgsql"));
        }

        var rows = parts.Select(p =>
        {
            var sorted = p.Value.Order().ToArray();
            return (p.Key, sorted[sorted.Length / 2], sorted[Math.Min(sorted.Length - 1, (int)(sorted.Length * 0.99))]);
        }).ToList();
        return (rows, complete, roundTrips.Count == 0 ? 0 : roundTrips.Order().ElementAt(roundTrips.Count / 2));
    }
}
