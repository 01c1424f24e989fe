using System.Data.Common;
using System.Security.Cryptography;
using Arrakis.Shared.Storage;
using Dapper;

namespace Arrakis.Shared.Tokens;

/// <summary>The keyring table of one issuing service. Private keys are stored encrypted.</summary>
public sealed class KeyStore(Database database, KeyProtector protector)
{
    sealed record Row(string kid, string status, string private_key_enc, string public_x, string public_y,
        long created_at, long? promote_at, long? activated_at, long? retired_at, long? revoked_at);

    public async Task<IReadOnlyList<SigningKey>> ListAsync(CancellationToken ct = default)
    {
        await using var connection = await database.OpenAsync(ct);
        var rows = await connection.QueryAsync<Row>(new CommandDefinition(
            "SELECT kid, status, private_key_enc, public_x, public_y, created_at, promote_at, activated_at, retired_at, revoked_at FROM signing_keys ORDER BY created_at DESC, kid",
            cancellationToken: ct));
        return rows.Select(ToKey).ToList();
    }

    SigningKey ToKey(Row r)
    {
        var status = Enum.Parse<KeyStatus>(r.status, ignoreCase: true);
        ECDsa? priv = null;
        if (status != KeyStatus.Revoked)
        {
            priv = ECDsa.Create();
            priv.ImportPkcs8PrivateKey(protector.Unprotect(r.private_key_enc, r.kid), out _);
        }

        return new SigningKey(r.kid, status, r.public_x, r.public_y, FromMs(r.created_at), FromMsOrNull(r.promote_at),
            FromMsOrNull(r.activated_at), FromMsOrNull(r.retired_at), FromMsOrNull(r.revoked_at), priv);
    }

    static DateTimeOffset FromMs(long ms) => DateTimeOffset.FromUnixTimeMilliseconds(ms);

    static DateTimeOffset? FromMsOrNull(long? ms) => ms is { } v ? FromMs(v) : null;

    public async Task InsertAsync(string kid, ECDsa key, KeyStatus status, DateTimeOffset now, DateTimeOffset? promoteAt, CancellationToken ct = default)
    {
        var (x, y) = SigningKey.PublicPoint(key);
        await using var connection = await database.OpenAsync(ct);
        await connection.ExecuteAsync(new CommandDefinition(
            """
            INSERT INTO signing_keys (kid, status, private_key_enc, public_x, public_y, created_at, promote_at, activated_at)
            VALUES (@kid, @status, @enc, @x, @y, @now, @promoteAt, @activatedAt)
            """,
            new
            {
                kid,
                status = status.ToString().ToLowerInvariant(),
                enc = protector.Protect(key.ExportPkcs8PrivateKey(), kid),
                x,
                y,
                now = now.ToUnixTimeMilliseconds(),
                promoteAt = promoteAt?.ToUnixTimeMilliseconds(),
                activatedAt = status == KeyStatus.Active ? now.ToUnixTimeMilliseconds() : (long?)null,
            },
            cancellationToken: ct));
    }

    /// <summary>Makes a pending key the active one and retires the previous active key, in one transaction.</summary>
    public async Task<bool> ActivateAsync(string kid, DateTimeOffset now, CancellationToken ct = default)
    {
        await using var connection = await database.OpenAsync(ct);
        await using var tx = await Database.BeginWriteAsync(connection, ct);
        var ms = now.ToUnixTimeMilliseconds();
        var status = await connection.ExecuteScalarAsync<string?>(new CommandDefinition(
            "SELECT status FROM signing_keys WHERE kid = @kid" + (database.IsPostgres ? " FOR UPDATE" : ""), new { kid }, tx, cancellationToken: ct));
        if (status != "pending")
        {
            return false;
        }

        await connection.ExecuteAsync(new CommandDefinition(
            "UPDATE signing_keys SET status = 'retired', retired_at = @ms WHERE status = 'active'", new { ms }, tx, cancellationToken: ct));
        var changed = await connection.ExecuteAsync(new CommandDefinition(
            "UPDATE signing_keys SET status = 'active', activated_at = @ms, promote_at = NULL WHERE kid = @kid AND status = 'pending'",
            new { kid, ms }, tx, cancellationToken: ct));
        await tx.CommitAsync(ct);
        return changed == 1;
    }

    public async Task<KeyStatus?> RevokeAsync(string kid, DateTimeOffset now, CancellationToken ct = default)
    {
        await using var connection = await database.OpenAsync(ct);
        await using var tx = await Database.BeginWriteAsync(connection, ct);
        var status = await connection.ExecuteScalarAsync<string?>(new CommandDefinition(
            "SELECT status FROM signing_keys WHERE kid = @kid", new { kid }, tx, cancellationToken: ct));
        if (status is null)
        {
            return null;
        }

        await connection.ExecuteAsync(new CommandDefinition(
            "UPDATE signing_keys SET status = 'revoked', revoked_at = @ms, promote_at = NULL WHERE kid = @kid",
            new { kid, ms = now.ToUnixTimeMilliseconds() }, tx, cancellationToken: ct));
        await tx.CommitAsync(ct);
        return Enum.Parse<KeyStatus>(status, ignoreCase: true);
    }
}
