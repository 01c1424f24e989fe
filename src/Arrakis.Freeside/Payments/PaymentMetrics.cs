using System.Diagnostics.Metrics;
using Microsoft.Extensions.Logging;

namespace Arrakis.Freeside.Payments;

/// <summary>
/// Meter <c>Arrakis.Payments</c>: PaymentCreated, PaymentFinished, PaymentFailed, and CreditsMinted (micro-USD granted from
/// x402 payments; Prometheus only: the dashboards' CreditsMinted is the ledger's, which counts these grants too).
/// </summary>
public sealed class PaymentMetrics
{
    public const string MeterName = "Arrakis.Payments";

    readonly Counter<long> _created;
    readonly Counter<long> _finished;
    readonly Counter<long> _failed;
    readonly Counter<long> _minted;

    public PaymentMetrics(IMeterFactory meters)
    {
        var meter = meters.Create(MeterName);
        _created = meter.CreateCounter<long>("PaymentCreated", description: "x402 payments verified and claimed");
        _finished = meter.CreateCounter<long>("PaymentFinished", description: "x402 payments settled on chain");
        _failed = meter.CreateCounter<long>("PaymentFailed", description: "x402 payments that failed verification, invoke or settlement");
        _minted = meter.CreateCounter<long>("CreditsMinted", unit: "micro-USD", description: "Credit-note micro-USD granted from x402 payments");
        // Dashboards and alarms need the series before the first payment.
        _created.Add(0);
        _finished.Add(0);
        _failed.Add(0);
    }

    public void Created(string kind) => _created.Add(1, new KeyValuePair<string, object?>("kind", kind));

    public void Finished(string kind) => _finished.Add(1, new KeyValuePair<string, object?>("kind", kind));

    public void Failed(string reason) => _failed.Add(1, new KeyValuePair<string, object?>("reason", reason));

    public void Minted(long micro) => _minted.Add(micro);
}

internal static partial class PaymentLog
{
    [LoggerMessage(EventId = 6001, EventName = "PaymentCreated", Level = LogLevel.Information, Message = "x402 payment {PaymentId} claimed from {Payer} for {ValueMicro} micro")]
    public static partial void PaymentCreated(ILogger logger, string paymentId, string payer, long valueMicro);

    [LoggerMessage(EventId = 6002, EventName = "PaymentFinished", Level = LogLevel.Information, Message = "x402 payment {PaymentId} settled in {Transaction}")]
    public static partial void PaymentFinished(ILogger logger, string paymentId, string transaction);

    [LoggerMessage(EventId = 6003, EventName = "PaymentFailed", Level = LogLevel.Warning, Message = "x402 payment {PaymentId} failed: {Reason}")]
    public static partial void PaymentFailed(ILogger logger, string paymentId, string reason);

    [LoggerMessage(EventId = 6004, EventName = "CreditsMinted", Level = LogLevel.Information, Message = "x402 credit note {CreditNoteId} of {AmountMicro} micro for community {CommunityId}")]
    public static partial void CreditsMinted(ILogger logger, string creditNoteId, long amountMicro, string communityId);

    [LoggerMessage(EventId = 6005, EventName = "PaymentRejected", Level = LogLevel.Information, Message = "x402 payment rejected: {Reason}")]
    public static partial void PaymentRejected(ILogger logger, string reason);

    [LoggerMessage(EventId = 6006, EventName = "PaymentRecovered", Level = LogLevel.Information, Message = "x402 payment {PaymentId} recovered from {State} to {Outcome}")]
    public static partial void PaymentRecovered(ILogger logger, string paymentId, string state, string outcome);

    [LoggerMessage(EventId = 6007, EventName = "CreditNoteUngranted", Level = LogLevel.Warning, Message = "x402 credit note {CreditNoteId} not granted yet: {Reason}")]
    public static partial void CreditNoteUngranted(ILogger logger, string creditNoteId, string reason);

    [LoggerMessage(EventId = 6008, EventName = "SettlementSkipped", Level = LogLevel.Warning, Message = "x402 payment {PaymentId} was already {State} when its paid invoke returned; not settled")]
    public static partial void SettlementSkipped(ILogger logger, string paymentId, string state);

    [LoggerMessage(EventId = 6009, EventName = "SettlementNotRecorded", Level = LogLevel.Warning, Message = "x402 payment {PaymentId} could not take settlement transaction {Transaction}: {Reason}")]
    public static partial void SettlementNotRecorded(ILogger logger, string paymentId, string transaction, string reason);

    [LoggerMessage(EventId = 6010, EventName = "PaymentRecoveryFailed", Level = LogLevel.Warning, Message = "x402 recovery of payment {PaymentId} in {State} failed; the pass goes on")]
    public static partial void RecoveryFailed(ILogger logger, Exception exception, string paymentId, string state);

    [LoggerMessage(EventId = 6011, EventName = "SettlementUnlocated", Level = LogLevel.Error,
        Message = "x402 payment {PaymentId}: authorization {Nonce} of {Payer} is used on chain, but neither its AuthorizationUsed nor its AuthorizationCanceled event is in the last {LookbackBlocks} blocks; the payment stays settling. Raise X402__SettlementLookbackBlocks so recovery finds the transaction that paid it")]
    public static partial void SettlementUnlocated(ILogger logger, string paymentId, string payer, string nonce, long lookbackBlocks);
}
