using System.Diagnostics.Metrics;
using Arrakis.Freeside.Audit;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Freeside.Tests.Audit;

/// <summary>The budget gauges (meter Arrakis.Agent) report the last audit's view of each community in cents.</summary>
public sealed class AuditMetricsTests
{
    /// <summary>
    /// The agent-budget-overspend alarm (CloudWatch and Prometheus) fires on agent_budget_overspend_cents &gt; 0. Budgets are
    /// kept in micro-USD, so an overspend of less than a cent is still a breach of committed + reserved ≤ limit: the gauge
    /// rounds it up to 1 cent instead of truncating it to 0, which kept the alarm silent.
    /// </summary>
    [Fact]
    public void An_overspend_of_a_fraction_of_a_cent_shows_as_one_cent_and_no_overspend_as_zero()
    {
        using var services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        var meters = services.GetRequiredService<IMeterFactory>();
        var metrics = new AuditMetrics(meters);
        var seen = new Dictionary<(string Instrument, string Community), long>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == AuditMetrics.AgentMeter && ReferenceEquals(instrument.Meter.Scope, meters))
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            var community = tags.ToArray().Single(t => t.Key == "community_id").Value as string;
            seen[(instrument.Name, community!)] = value;
        });
        listener.Start();

        metrics.Record(new ConservationReport(false, DateTimeOffset.UtcNow,
        [
            Community("sub-cent", committedMicro: 1_000_300, reservedMicro: 200, limitMicro: 1_000_000), // 500 micro over
            Community("one-cent", committedMicro: 1_000_000, reservedMicro: 10_000, limitMicro: 1_000_000),
            Community("within", committedMicro: 999_999, reservedMicro: 1, limitMicro: 1_000_000), // exactly at the limit
        ]));
        listener.RecordObservableInstruments();

        Assert.Equal(1, seen[("agent_budget_overspend_cents", "sub-cent")]);
        Assert.Equal(1, seen[("agent_budget_overspend_cents", "one-cent")]);
        Assert.Equal(0, seen[("agent_budget_overspend_cents", "within")]);
        Assert.Equal(100, seen[("budget_limit_cents", "sub-cent")]);
        Assert.Equal(100, seen[("budget_committed_cents", "sub-cent")]);
    }

    static CommunityAudit Community(string id, long committedMicro, long reservedMicro, long limitMicro) =>
        new(id, committedMicro + reservedMicro <= limitMicro, [], new BudgetGaugeValues(committedMicro, reservedMicro, limitMicro));
}
