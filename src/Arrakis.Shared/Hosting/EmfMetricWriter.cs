using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Hosting;

namespace Arrakis.Shared.Hosting;

/// <summary>Settings under <c>Metrics:Emf</c>.</summary>
public sealed class EmfOptions
{
    public const string Section = "Metrics:Emf";

    public bool Enabled { get; set; }

    public string Environment { get; set; } = "staging";

    public int IntervalSeconds { get; set; } = 10;
}

/// <summary>
/// CloudWatch Embedded Metric Format on stdout. A <see cref="MeterListener"/> over the <c>Arrakis.*</c> meters reads
/// the same instruments the Prometheus exporter reads, keeps only those in <see cref="MetricCatalog"/>, and every
/// interval writes one JSON line per metric and dimension set, under the catalog's namespace, name and unit.
/// Counters are summed per interval (a series once seen, and every counter without dimensions, writes 0 when quiet),
/// histograms are written as value lists, gauges as their last value (summed over tags that are not CloudWatch dimensions).
/// </summary>
public sealed class EmfMetricWriter : BackgroundService
{
    const int MaxValuesPerLine = 100;
    readonly EmfOptions _options;
    readonly TextWriter _out;
    readonly TimeProvider _time;
    readonly MeterListener _listener;
    readonly Lock _gate = new();
    readonly ConcurrentDictionary<string, Series> _series = new(StringComparer.Ordinal);

    /// <summary>Listens to the meters this service's <paramref name="meters"/> factory created (so in-process hosts stay apart).</summary>
    public EmfMetricWriter(EmfOptions options, TimeProvider time, IMeterFactory meters)
        : this(options, time, Console.Out, meters)
    {
    }

    internal EmfMetricWriter(EmfOptions options, TimeProvider time, TextWriter output, IMeterFactory? scope)
    {
        _options = options;
        _time = time;
        _out = output;
        _listener = new MeterListener
        {
            InstrumentPublished = (instrument, listener) =>
            {
                if (!instrument.Meter.Name.StartsWith("Arrakis.", StringComparison.Ordinal) || (scope is not null && !ReferenceEquals(instrument.Meter.Scope, scope)))
                {
                    return;
                }

                var defs = MetricCatalog.ForInstrument(instrument.Meter.Name, instrument.Name).Where(d => d.Namespace is not null).ToArray();
                if (defs.Length > 0)
                {
                    listener.EnableMeasurementEvents(instrument, defs);
                    lock (_gate)
                    {
                        // A counter without dimensions reports 0 for quiet intervals, so its alarm sees data, not a gap.
                        foreach (var def in defs.Where(d => d.Kind == InstrumentKind.Counter && d.DimensionMap.Count == 0))
                        {
                            var groupKey = def.Namespace + "/" + def.Name + "|";
                            _series.GetOrAdd(instrument.Meter.Name + "/" + instrument.Name + "|" + groupKey + "|zero", _ => new Series(def, groupKey, new Dictionary<string, string>()));
                        }
                    }
                }
            },
        };
        _listener.SetMeasurementEventCallback<long>((i, v, tags, state) => Record(i, v, tags, state));
        _listener.SetMeasurementEventCallback<int>((i, v, tags, state) => Record(i, v, tags, state));
        _listener.SetMeasurementEventCallback<double>((i, v, tags, state) => Record(i, v, tags, state));
        _listener.SetMeasurementEventCallback<float>((i, v, tags, state) => Record(i, v, tags, state));
        _listener.SetMeasurementEventCallback<decimal>((i, v, tags, state) => Record(i, (double)v, tags, state));
        _listener.Start();
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(Math.Max(1, _options.IntervalSeconds)), _time);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                Flush();
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }

        Flush();
    }

    public override void Dispose()
    {
        _listener.Dispose();
        base.Dispose();
    }

    /// <summary>Reads observable instruments and writes everything recorded since the last flush.</summary>
    public void Flush()
    {
        _listener.RecordObservableInstruments();
        var timestamp = _time.GetUtcNow().ToUnixTimeMilliseconds();
        var lines = new List<string>();
        lock (_gate)
        {
            foreach (var group in _series.Values.GroupBy(s => s.GroupKey, StringComparer.Ordinal).OrderBy(g => g.Key, StringComparer.Ordinal))
            {
                var first = group.First();
                var def = first.Definition;
                var ns = def.NamespaceFor(_options.Environment)!;
                switch (def.Kind)
                {
                    case InstrumentKind.Gauge:
                        var present = group.Where(s => s.Last is not null).ToList();
                        if (present.Count > 0)
                        {
                            lines.Add(Line(timestamp, ns, def, first.Dimensions, present.Sum(s => s.Last!.Value)));
                        }

                        break;
                    case InstrumentKind.Histogram:
                        var values = group.SelectMany(s => s.Values).ToList();
                        for (var i = 0; i < values.Count; i += MaxValuesPerLine)
                        {
                            lines.Add(Line(timestamp, ns, def, first.Dimensions, values.Skip(i).Take(MaxValuesPerLine).ToList()));
                        }

                        break;
                    default:
                        var touched = group.Where(s => s.Touched || s.Definition.Kind == InstrumentKind.Counter).ToList();
                        if (touched.Count > 0)
                        {
                            lines.Add(Line(timestamp, ns, def, first.Dimensions, touched.Sum(s => s.Sum)));
                        }

                        break;
                }

                foreach (var s in group)
                {
                    s.Reset();
                }
            }
        }

        foreach (var line in lines)
        {
            _out.Write(line + "\n");
        }

        _out.Flush();
    }

    void Record(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags, object? state)
    {
        if (state is not MetricDefinition[] defs)
        {
            return;
        }

        var allTags = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var (k, v) in tags)
        {
            allTags[k] = Convert.ToString(v, System.Globalization.CultureInfo.InvariantCulture) ?? string.Empty;
        }

        lock (_gate)
        {
            foreach (var def in defs)
            {
                var dims = new SortedDictionary<string, string>(StringComparer.Ordinal);
                foreach (var (tag, dimension) in def.DimensionMap)
                {
                    dims[dimension] = allTags.TryGetValue(tag, out var tv) ? tv : "unknown";
                }

                var dimKey = string.Join('|', dims.Select(d => d.Key + "=" + d.Value));
                var groupKey = def.Namespace + "/" + def.Name + "|" + dimKey;
                var seriesKey = instrument.Meter.Name + "/" + instrument.Name + "|" + groupKey + "|" + string.Join('|', allTags.Select(t => t.Key + "=" + t.Value));
                var series = _series.GetOrAdd(seriesKey, _ => new Series(def, groupKey, dims));
                series.Add(value);
            }
        }
    }

    string Line(long timestamp, string ns, MetricDefinition def, IReadOnlyDictionary<string, string> dims, object value)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteStartObject("_aws");
            json.WriteNumber("Timestamp", timestamp);
            json.WriteStartArray("CloudWatchMetrics");
            json.WriteStartObject();
            json.WriteString("Namespace", ns);
            json.WriteStartArray("Dimensions");
            json.WriteStartArray();
            json.WriteStringValue("Environment");
            foreach (var key in dims.Keys)
            {
                json.WriteStringValue(key);
            }

            json.WriteEndArray();
            json.WriteEndArray();
            json.WriteStartArray("Metrics");
            json.WriteStartObject();
            json.WriteString("Name", def.Name);
            json.WriteString("Unit", def.CloudWatchUnit);
            json.WriteEndObject();
            json.WriteEndArray();
            json.WriteEndObject();
            json.WriteEndArray();
            json.WriteEndObject();
            json.WriteString("Environment", _options.Environment);
            foreach (var (k, v) in dims)
            {
                json.WriteString(k, v);
            }

            if (value is List<double> list)
            {
                json.WriteStartArray(def.Name);
                foreach (var v in list)
                {
                    json.WriteNumberValue(v);
                }

                json.WriteEndArray();
            }
            else
            {
                json.WriteNumber(def.Name, (double)value);
            }

            json.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    sealed class Series(MetricDefinition definition, string groupKey, IReadOnlyDictionary<string, string> dimensions)
    {
        public MetricDefinition Definition { get; } = definition;

        public string GroupKey { get; } = groupKey;

        public IReadOnlyDictionary<string, string> Dimensions { get; } = dimensions;

        public double Sum { get; private set; }

        public bool Touched { get; private set; }

        public double? Last { get; private set; }

        public List<double> Values { get; } = [];

        public void Add(double value)
        {
            Touched = true;
            switch (Definition.Kind)
            {
                case InstrumentKind.Gauge: Last = value; break;
                case InstrumentKind.Histogram: Values.Add(value); break;
                default: Sum += value; break;
            }
        }

        /// <summary>Counters and histograms restart each interval; gauges keep their last value until observed again.</summary>
        public void Reset()
        {
            Sum = 0;
            Touched = false;
            Values.Clear();
        }
    }
}
