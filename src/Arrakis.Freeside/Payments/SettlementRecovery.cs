using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Arrakis.Freeside.Payments;

/// <summary>
/// Finishes what a crash left: <c>settling</c> rows are settled again (the direct settler rebroadcasts the recorded
/// transaction, so it never pays twice, and signs a new one only once the chain says the recorded one can never be mined
/// and the authorization is unused; a row whose outcome the chain cannot tell yet stays <c>settling</c> for the next
/// pass, never failed while the earlier attempt may have moved the money), stale <c>verified</c> rows are failed (the invoke's result is unknown, so
/// nothing settles), and settled rows with an ungranted credit note are granted. Each row is handled on its own: a stale
/// row is taken only if nobody touched it since it was listed, and a row that throws is logged and left for a later pass.
/// </summary>
public sealed class SettlementRecovery(PaymentStore store, PaymentFlow flow, IOptions<X402Options> options, TimeProvider time, ILogger<SettlementRecovery> logger)
    : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await RecoverOnceAsync(stoppingToken);
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                logger.LogWarning(ex, "x402 settlement recovery pass failed");
            }

            try
            {
                await Task.Delay(TimeSpan.FromSeconds(options.Value.RecoveryIntervalSeconds), time, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    /// <summary>One recovery pass; returns how many rows it found. Each row is handled on its own: one that fails is logged and left for a later pass.</summary>
    public async Task<int> RecoverOnceAsync(CancellationToken ct)
    {
        var cutoff = time.GetUtcNow().AddSeconds(-options.Value.RecoveryAfterSeconds).ToUnixTimeMilliseconds();
        var rows = await store.ListRecoverableAsync(cutoff, ct);
        foreach (var row in rows)
        {
            try
            {
                await RecoverAsync(row, ct);
            }
            catch (Exception ex) when (!ct.IsCancellationRequested)
            {
                PaymentLog.RecoveryFailed(logger, ex, row.Id, row.State);
            }
        }

        return rows.Count;
    }

    async Task RecoverAsync(PaymentRow row, CancellationToken ct)
    {
        var before = row.State;
        // A stale row is taken only if nobody touched it since the listing (another replica's pass may have it).
        if (row.State is PaymentStates.Verified or PaymentStates.Settling && !await store.TakeForRecoveryAsync(row, ct))
        {
            return;
        }

        switch (row.State)
        {
            case PaymentStates.Verified:
                await store.MarkFailedAsync(row.Id, "abandoned", 502, """{"error":"abandoned","detail":"The paid invoke never finished; nothing was settled."}""", ct);
                break;
            case PaymentStates.Settling when row.Kind == "proof" && row.TxHash is { } tx:
                await flow.FinishAsync(row, tx, ct);
                break;
            case PaymentStates.Settling:
                await flow.SettleAndFinishAsync(row, flow.RequestFor(row) with { Resumed = true }, ct);
                break;
            case PaymentStates.Settled:
                await flow.GrantAsync(row, ct);
                break;
        }

        var after = await store.GetAsync(row.Id, ct);
        PaymentLog.PaymentRecovered(logger, row.Id, before, after?.State ?? "missing");
    }
}
