using System.Data.Common;
using System.Security.Cryptography;
using Arrakis.Shared.Storage;
using Dapper;

namespace Arrakis.Shared.Tokens;

/// <summary>
/// The keyring table of one issuing service. Private keys are stored encrypted, and only while the key may sign or is
/// still published: revocation destroys the private key, and <see cref="DestroyRetiredPrivateKeysAsync"/> that of a
/// retired key that has left the JWKS. The row itself stays for 'loa keys list' and audits.
/// </summary>
public sealed class KeyStore(Database database, KeyProtector protector)
{
    sealed record Row(string kid, string status, string? private_key_enc, string public_x, string public_y,
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
        if (status is KeyStatus.Pending or KeyStatus.Active)
        {
            // Only a key that signs or may yet sign is decrypted. Every retired key was decrypted and imported on every
            // reload (each 2 s, on every replica), although it never signs again: with daily rotations, hundreds of
            // private keys held in memory and decrypted over and over.
            priv = ECDsa.Create();
            priv.ImportPkcs8PrivateKey(protector.Unprotect(r.private_key_enc!, r.kid), out _);
        }

        return new SigningKey(r.kid, status, r.public_x, r.public_y, FromMs(r.created_at), FromMsOrNull(r.promote_at),
            FromMsOrNull(r.activated_at), FromMsOrNull(r.retired_at), FromMsOrNull(r.revoked_at), priv);
    }

    static DateTimeOffset FromMs(long ms) => DateTimeOffset.FromUnixTimeMilliseconds(ms);

    static DateTimeOffset? FromMsOrNull(long? ms) => ms is { } v ? FromMs(v) : null;

    public async Task InsertAsync(string kid, ECDsa key, KeyStatus status, DateTimeOffset now, DateTimeOffset? promoteAt, CancellationToken ct = default)
    {
        await using var connection = await database.OpenAsync(ct);
        await InsertAsync(connection, null, kid, key, status, now, promoteAt, ct);
    }

    Task InsertAsync(DbConnection connection, DbTransaction? tx, string kid, ECDsa key, KeyStatus status, DateTimeOffset now, DateTimeOffset? promoteAt, CancellationToken ct)
    {
        var (x, y) = SigningKey.PublicPoint(key);
        return connection.ExecuteAsync(new CommandDefinition(
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
            tx,
            cancellationToken: ct));
    }

    /// <summary>
    /// A transaction that changes which key is active. On PostgreSQL it first locks the table against other key changes
    /// (reads go on): two replicas promoting, or a promotion meeting a revocation, each read the active key before the
    /// other's change committed, and the second then hit the one-active-key index with an exception (or the two
    /// deadlocked on each other's row locks). SQLite's write transaction already runs one at a time.
    /// </summary>
    async Task<DbTransaction> BeginKeyChangeAsync(DbConnection connection, CancellationToken ct)
    {
        var tx = await Database.BeginWriteAsync(connection, ct);
        if (database.IsPostgres)
        {
            await connection.ExecuteAsync(new CommandDefinition("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE", transaction: tx, cancellationToken: ct));
        }

        return tx;
    }

    /// <summary>Makes a pending key the active one and retires the previous active key, in one transaction.</summary>
    public async Task<bool> ActivateAsync(string kid, DateTimeOffset now, CancellationToken ct = default)
    {
        await using var connection = await database.OpenAsync(ct);
        await using var tx = await BeginKeyChangeAsync(connection, ct);
        var ms = now.ToUnixTimeMilliseconds();
        var status = await connection.ExecuteScalarAsync<string?>(new CommandDefinition(
            "SELECT status FROM signing_keys WHERE kid = @kid", new { kid }, tx, cancellationToken: ct));
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

    /// <summary>
    /// Destroys the stored private key of every key retired at or before <paramref name="retiredAtOrBefore"/> (keys no
    /// longer published: a retired key never signs again). Returns how many were destroyed.
    /// </summary>
    public async Task<int> DestroyRetiredPrivateKeysAsync(DateTimeOffset retiredAtOrBefore, CancellationToken ct = default)
    {
        await using var connection = await database.OpenAsync(ct);
        return await connection.ExecuteAsync(new CommandDefinition(
            "UPDATE signing_keys SET private_key_enc = NULL WHERE status = 'retired' AND retired_at <= @cutoff AND private_key_enc IS NOT NULL",
            new { cutoff = retiredAtOrBefore.ToUnixTimeMilliseconds() }, cancellationToken: ct));
    }

    /// <summary>
    /// Revokes a key and destroys its stored private key (it is compromised or unwanted). When it was the active key, the
    /// newest pending key becomes active in the same transaction, or <paramref name="replacement"/>'s key when none is
    /// pending, so no replica ever reads a keyring without an active key. Before, the revocation and the next activation
    /// were two transactions, and a replica reloading between them could not sign anything until its next reload.
    /// </summary>
    /// <returns>The key's status before, or null when there is no such kid; and the kid that became active, if any.</returns>
    public async Task<(KeyStatus? Previous, string? Activated)> RevokeAsync(string kid, DateTimeOffset now, Func<(string Kid, ECDsa Key)> replacement, CancellationToken ct = default)
    {
        await using var connection = await database.OpenAsync(ct);
        await using var tx = await BeginKeyChangeAsync(connection, ct);
        var status = await connection.ExecuteScalarAsync<string?>(new CommandDefinition(
            "SELECT status FROM signing_keys WHERE kid = @kid", new { kid }, tx, cancellationToken: ct));
        if (status is null)
        {
            return (null, null);
        }

        var ms = now.ToUnixTimeMilliseconds();
        await connection.ExecuteAsync(new CommandDefinition(
            // A key revoked again keeps the time of its first revocation (its history).
            "UPDATE signing_keys SET status = 'revoked', revoked_at = COALESCE(revoked_at, @ms), promote_at = NULL, private_key_enc = NULL WHERE kid = @kid",
            new { kid, ms }, tx, cancellationToken: ct));
        var previous = Enum.Parse<KeyStatus>(status, ignoreCase: true);
        string? activated = null;
        if (previous == KeyStatus.Active)
        {
            activated = await connection.ExecuteScalarAsync<string?>(new CommandDefinition(
                "SELECT kid FROM signing_keys WHERE status = 'pending' ORDER BY created_at DESC, kid LIMIT 1", transaction: tx, cancellationToken: ct));
            if (activated is not null)
            {
                await connection.ExecuteAsync(new CommandDefinition(
                    "UPDATE signing_keys SET status = 'active', activated_at = @ms, promote_at = NULL WHERE kid = @kid",
                    new { kid = activated, ms }, tx, cancellationToken: ct));
            }
            else
            {
                var (freshKid, key) = replacement();
                using (key)
                {
                    await InsertAsync(connection, tx, freshKid, key, KeyStatus.Active, now, null, ct);
                }

                activated = freshKid;
            }
        }

        await tx.CommitAsync(ct);
        return (previous, activated);
    }
}
