using System.Diagnostics.Metrics;
using Arrakis.Freeside.Ledger;

namespace Arrakis.Freeside.Audit;

/// <summary>
/// Conservation counters (meter <c>Arrakis.Billing</c>) and the budget gauges (meter <c>Arrakis.Agent</c>), which
/// report the last audit's view per community.
/// </summary>
public sealed class AuditMetrics
{
    public const string AgentMeter = "Arrakis.Agent";

    readonly Counter<long> _passed;
    readonly Counter<long> _failed;
    volatile IReadOnlyList<CommunityAudit> _last = [];

    public AuditMetrics(IMeterFactory meters)
    {
        var billing = meters.Create(LedgerMetrics.Meter);
        _passed = billing.CreateCounter<long>("ConservationCheckPassed", "{check}", "Conservation audits in which every invariant held");
        _failed = billing.CreateCounter<long>("ConservationCheckFailed", "{check}", "Invariant breaches found by conservation audits");
        _failed.Add(0); // the alarm needs the series before the first breach
        var agent = meters.Create(AgentMeter);
        agent.CreateObservableGauge("budget_committed_cents", () => Observe(b => b.CommittedMicro), "{cent}");
        agent.CreateObservableGauge("budget_reserved_cents", () => Observe(b => b.ReservedMicro), "{cent}");
        agent.CreateObservableGauge("budget_available_cents", () => Observe(b => b.AvailableMicro), "{cent}");
        agent.CreateObservableGauge("budget_limit_cents", () => Observe(b => b.LimitMicro), "{cent}");
        // Rounded up: an overspend of a fraction of a cent is still a breach, and the alarm fires on anything above 0.
        agent.CreateObservableGauge("agent_budget_overspend_cents", () => Observe(b => b.OverspendMicro, roundUp: true), "{cent}");
    }

    public void Record(ConservationReport report)
    {
        _last = report.Communities;
        if (report.Passed)
        {
            _passed.Add(1);
        }

        foreach (var audit in report.Communities)
        {
            foreach (var check in audit.Checks.Where(c => !c.Passed))
            {
                _failed.Add(1, new KeyValuePair<string, object?>("invariant", check.Invariant));
            }
        }
    }

    IEnumerable<Measurement<long>> Observe(Func<BudgetGaugeValues, long> micro, bool roundUp = false) =>
        _last.Select(a => new Measurement<long>((micro(a.Budget) + (roundUp ? 9_999 : 0)) / 10_000, new KeyValuePair<string, object?>("community_id", a.CommunityId)));
}
