using System.Diagnostics.Metrics;

namespace Arrakis.Freeside.Ledger;

/// <summary>Billing counters (meter <c>Arrakis.Billing</c>), named as the dashboards name them.</summary>
public sealed class LedgerMetrics(IMeterFactory meters)
{
    public const string Meter = "Arrakis.Billing";

    readonly Counter<long> _minted = meters.Create(Meter).CreateCounter<long>("CreditsMinted", "{micro-USD}", "Credits granted into wallets");
    readonly Counter<long> _spent = meters.Create(Meter).CreateCounter<long>("CreditsSpent", "{micro-USD}", "Credits spent by finalized calls");

    public void Minted(long micro, string source) => _minted.Add(micro, new KeyValuePair<string, object?>("source", source));

    public void Spent(long micro) => _spent.Add(micro);
}
