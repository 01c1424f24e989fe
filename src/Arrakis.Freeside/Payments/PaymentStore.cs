using Arrakis.Shared.Storage;
using Dapper;

namespace Arrakis.Freeside.Payments;

/// <summary>Settlement states, persisted: <c>verified</c> → <c>settling</c> → <c>settled</c> | <c>failed</c>.</summary>
public static class PaymentStates
{
    public const string Verified = "verified";
    public const string Settling = "settling";
    public const string Settled = "settled";
    public const string Failed = "failed";
}

/// <summary>What recording a settlement transaction on a payment did.</summary>
public enum RecordOutcome
{
    /// <summary>The transaction is now the payment's; the settlement may go ahead.</summary>
    Recorded,

    /// <summary>Another payment already holds this transaction hash: it must not be credited twice.</summary>
    TransactionClaimed,

    /// <summary>The payment is no longer <c>settling</c> (recovery or another worker finished it): this worker does not own it.</summary>
    NotSettling,
}

public sealed class PaymentRow
{
    public string Id { get; set; } = "";
    public string Kind { get; set; } = "authorization";
    public long X402Version { get; set; }
    public string Network { get; set; } = "";
    public string Asset { get; set; } = "";
    public string Payer { get; set; } = "";
    public string Nonce { get; set; } = "";
    public string? PaymentIdentifier { get; set; }
    public string PayloadHash { get; set; } = "";
    public string PayloadJson { get; set; } = "{}";
    public string RequirementJson { get; set; } = "{}";
    public long AmountRequiredMicro { get; set; }
    public long ValueMicro { get; set; }
    public string? CommunityId { get; set; }
    public string State { get; set; } = PaymentStates.Verified;
    public string? TxHash { get; set; }
    public string? RawTx { get; set; }
    public long? CostMicro { get; set; }
    public string? InvokeBody { get; set; }
    public string? Error { get; set; }
    public string? CreditNoteId { get; set; }
    public string? CreditLotId { get; set; }
    public long? CreditMicro { get; set; }
    public long CreditGranted { get; set; }
    public long? ResponseStatus { get; set; }
    public string? ResponseJson { get; set; }
    public long CreatedAt { get; set; }
    public long UpdatedAt { get; set; }
}

/// <summary>The one store of x402 payments. Every transition is a conditional update on the current state.</summary>
public sealed class PaymentStore(Database db, TimeProvider time)
{
    const string Columns = """
        id AS Id, kind AS Kind, x402_version AS X402Version, network AS Network, asset AS Asset, payer AS Payer, nonce AS Nonce,
        payment_identifier AS PaymentIdentifier, payload_hash AS PayloadHash, payload_json AS PayloadJson, requirement_json AS RequirementJson,
        amount_required_micro AS AmountRequiredMicro, value_micro AS ValueMicro, community_id AS CommunityId, state AS State,
        tx_hash AS TxHash, raw_tx AS RawTx, cost_micro AS CostMicro, invoke_body AS InvokeBody, error AS Error,
        credit_note_id AS CreditNoteId, credit_lot_id AS CreditLotId, credit_micro AS CreditMicro, credit_granted AS CreditGranted,
        response_status AS ResponseStatus, response_json AS ResponseJson, created_at AS CreatedAt, updated_at AS UpdatedAt
        """;

    long Now => time.GetUtcNow().ToUnixTimeMilliseconds();

    /// <summary>Inserts a new payment; on a unique conflict returns the row that already holds the key instead.</summary>
    public async Task<(bool Inserted, PaymentRow Row)> ClaimAsync(PaymentRow row, CancellationToken ct)
    {
        row.CreatedAt = row.UpdatedAt = Now;
        await using var connection = await db.OpenAsync(ct);
        try
        {
            await connection.ExecuteAsync(new CommandDefinition("""
                INSERT INTO x402_payments (id, kind, x402_version, network, asset, payer, nonce, payment_identifier, payload_hash, payload_json,
                    requirement_json, amount_required_micro, value_micro, community_id, state, tx_hash, created_at, updated_at)
                VALUES (@Id, @Kind, @X402Version, @Network, @Asset, @Payer, @Nonce, @PaymentIdentifier, @PayloadHash, @PayloadJson,
                    @RequirementJson, @AmountRequiredMicro, @ValueMicro, @CommunityId, @State, @TxHash, @CreatedAt, @UpdatedAt)
                """, row, cancellationToken: ct));
            return (true, row);
        }
        catch (Exception ex) when (Database.IsUniqueViolation(ex))
        {
            var existing = (row.PaymentIdentifier is { } pid ? await FindAsync("payment_identifier = @pid", new { pid }, ct) : null)
                ?? await FindAsync("network = @Network AND asset = @Asset AND payer = @Payer AND nonce = @Nonce", row, ct)
                ?? (row.TxHash is { } tx ? await FindAsync("tx_hash = @tx", new { tx }, ct) : null)
                ?? throw new InvalidOperationException("Unique conflict on x402_payments without a matching row.", ex);
            return (false, existing);
        }
    }

    public Task<PaymentRow?> GetAsync(string id, CancellationToken ct) => FindAsync("id = @id", new { id }, ct);

    public Task<PaymentRow?> FindByTxAsync(string txHash, CancellationToken ct) => FindAsync("tx_hash = @txHash", new { txHash }, ct);

    async Task<PaymentRow?> FindAsync(string where, object args, CancellationToken ct)
    {
        await using var connection = await db.OpenAsync(ct);
        return await connection.QuerySingleOrDefaultAsync<PaymentRow>(new CommandDefinition($"SELECT {Columns} FROM x402_payments WHERE {where}", args, cancellationToken: ct));
    }

    /// <summary>verified → settling, recording what the invoke cost and answered.</summary>
    public Task<bool> MarkSettlingAsync(string id, long costMicro, string? invokeBody, CancellationToken ct) =>
        UpdateAsync("state = 'settling', cost_micro = @costMicro, invoke_body = @invokeBody", "state = 'verified'", new { id, costMicro, invokeBody }, ct);

    /// <summary>
    /// Records the settlement transaction (before it is broadcast, when the settler signs it), so recovery can find it
    /// after a crash. Only a <c>settling</c> row takes it, and a transaction hash belongs to at most one payment.
    /// </summary>
    public async Task<RecordOutcome> RecordTransactionAsync(string id, string txHash, string? rawTx, CancellationToken ct)
    {
        try
        {
            return await UpdateAsync("tx_hash = @txHash, raw_tx = @rawTx", "state = 'settling'", new { id, txHash, rawTx }, ct)
                ? RecordOutcome.Recorded
                : RecordOutcome.NotSettling;
        }
        catch (Exception ex) when (Database.IsUniqueViolation(ex))
        {
            return RecordOutcome.TransactionClaimed;
        }
    }

    public Task<bool> MarkSettledAsync(string id, string txHash, string? creditNoteId, string? lotId, long creditMicro, int responseStatus, string responseJson, CancellationToken ct) =>
        UpdateAsync("state = 'settled', tx_hash = @txHash, credit_note_id = @creditNoteId, credit_lot_id = @lotId, credit_micro = @creditMicro, response_status = @responseStatus, response_json = @responseJson",
            "state = 'settling'", new { id, txHash, creditNoteId, lotId, creditMicro, responseStatus, responseJson }, ct);

    public Task<bool> MarkFailedAsync(string id, string error, int responseStatus, string responseJson, CancellationToken ct) =>
        UpdateAsync("state = 'failed', error = @error, response_status = @responseStatus, response_json = @responseJson",
            "state IN ('verified', 'settling')", new { id, error, responseStatus, responseJson }, ct);

    /// <summary>
    /// Recovery takes a stale <c>verified</c> or <c>settling</c> row only if nobody touched it since it was listed, and
    /// touching it keeps every other recovery pass (on any replica) off it for another <c>RecoveryAfterSeconds</c>.
    /// </summary>
    public Task<bool> TakeForRecoveryAsync(PaymentRow row, CancellationToken ct) =>
        UpdateAsync("state = state", "state = @state AND updated_at = @seen", new { id = row.Id, state = row.State, seen = row.UpdatedAt }, ct);

    public Task<bool> MarkCreditGrantedAsync(string id, CancellationToken ct) =>
        UpdateAsync("credit_granted = 1", "credit_granted = 0", new { id }, ct);

    async Task<bool> UpdateAsync(string set, string condition, object args, CancellationToken ct)
    {
        var p = new DynamicParameters(args);
        p.Add("now", Now);
        await using var connection = await db.OpenAsync(ct);
        return await connection.ExecuteAsync(new CommandDefinition($"UPDATE x402_payments SET {set}, updated_at = @now WHERE id = @id AND {condition}", p, cancellationToken: ct)) == 1;
    }

    /// <summary>Rows a crash may have left behind: stale verified or settling, or settled with an ungranted credit note.</summary>
    public async Task<IReadOnlyList<PaymentRow>> ListRecoverableAsync(long staleBeforeMs, CancellationToken ct)
    {
        await using var connection = await db.OpenAsync(ct);
        var rows = await connection.QueryAsync<PaymentRow>(new CommandDefinition($"""
            SELECT {Columns} FROM x402_payments
            WHERE (state IN ('verified', 'settling') AND updated_at < @staleBeforeMs)
               OR (state = 'settled' AND credit_granted = 0 AND credit_lot_id IS NOT NULL AND credit_micro > 0 AND community_id IS NOT NULL)
            ORDER BY created_at
            """, new { staleBeforeMs }, cancellationToken: ct));
        return rows.AsList();
    }

    public async Task<long> CountAsync(string state, CancellationToken ct)
    {
        await using var connection = await db.OpenAsync(ct);
        return await connection.ExecuteScalarAsync<long>(new CommandDefinition("SELECT COUNT(*) FROM x402_payments WHERE state = @state", new { state }, cancellationToken: ct));
    }
}
