using System.Security.Cryptography;
using Arrakis.Shared.Storage;
using Microsoft.Extensions.Logging;

namespace Arrakis.Shared.Tokens;

public sealed class KeyringOptions
{
    /// <summary>
    /// The longest lifetime of a user token. Retired keys stay published this long (or as long as a longer kind of
    /// token declared with <see cref="AlsoVerifying"/>), plus the 30 s clock skew and one reload interval.
    /// </summary>
    public TimeSpan MaxTokenLifetime { get; set; } = TimeSpan.FromMinutes(15);

    TimeSpan _longestOtherLifetime;

    /// <summary>
    /// Declares another kind of token verified against this keyring that may live up to <paramref name="lifetime"/>
    /// (freeside's operator tokens: an hour), so a retired key stays published until those have expired too.
    /// </summary>
    public KeyringOptions AlsoVerifying(TimeSpan lifetime)
    {
        if (lifetime > _longestOtherLifetime)
        {
            _longestOtherLifetime = lifetime;
        }

        return this;
    }

    /// <summary>
    /// How long a retired key stays published: the longest token it may have signed, plus the skew verifiers allow past
    /// exp and one reload interval (a replica may sign with the old key until its next reload).
    /// </summary>
    public TimeSpan RetiredKeyRetention =>
        (MaxTokenLifetime > _longestOtherLifetime ? MaxTokenLifetime : _longestOtherLifetime) + TokenVerifier.ClockSkew + ReloadInterval;

    /// <summary>How often replicas reload the keyring from the database (must be at most 5 s).</summary>
    public TimeSpan ReloadInterval { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>Default wait between publishing a pending key and signing with it: twice the JWKS max-age.</summary>
    public TimeSpan PropagationDelay { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Refuses values that would break token checks, naming the setting. <c>MaxTokenLifetime=15</c> reads as 15 days (a
    /// TimeSpan), and 0 or a negative value refused every user token.
    /// </summary>
    public KeyringOptions Validate()
    {
        if (MaxTokenLifetime <= TimeSpan.Zero || MaxTokenLifetime > TimeSpan.FromHours(24))
        {
            throw new InvalidOperationException($"Keyring:MaxTokenLifetime must be above zero and at most 24 hours, as hh:mm:ss (e.g. 00:15:00; was {MaxTokenLifetime}).");
        }

        if (ReloadInterval <= TimeSpan.Zero || ReloadInterval > TimeSpan.FromSeconds(5))
        {
            throw new InvalidOperationException($"Keyring:ReloadInterval must be above zero and at most 5 seconds (e.g. 00:00:02; was {ReloadInterval}).");
        }

        if (PropagationDelay < TimeSpan.Zero || PropagationDelay > TimeSpan.FromHours(24))
        {
            throw new InvalidOperationException($"Keyring:PropagationDelay must be between 0 and 24 hours (e.g. 00:01:00; was {PropagationDelay}).");
        }

        return this;
    }
}

/// <summary>An immutable view of the keyring at one reload.</summary>
public sealed record KeyringSnapshot(SigningKey? Active, IReadOnlyList<SigningKey> Published, IReadOnlyList<SigningKey> All);

/// <summary>
/// One issuing service's keyring: DB-backed, cached in memory and reloaded on a timer, so every replica signs with
/// the same active key and publishes the same JWKS within one reload interval.
/// </summary>
public sealed class Keyring(KeyStore store, TimeProvider time, KeyringOptions options, ILogger<Keyring> logger)
{
    KeyringSnapshot _snapshot = new(null, [], []);
    readonly SemaphoreSlim _reloadGate = new(1, 1);
    DateTimeOffset _destroyedThrough = DateTimeOffset.MinValue; // retired keys up to here have no stored private key

    public KeyringSnapshot Current => Volatile.Read(ref _snapshot);

    public KeyringOptions Options => options;

    /// <summary>Loads the keyring, creating the first active key when there is none.</summary>
    public async Task InitializeAsync(CancellationToken ct = default)
    {
        await ReloadAsync(ct);
        if (Current.Active is null)
        {
            using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var kid = NewKid(key);
            try
            {
                await store.InsertAsync(kid, key, KeyStatus.Active, time.GetUtcNow(), null, ct);
                logger.LogInformation("Created signing key {Kid}", kid);
            }
            catch (System.Data.Common.DbException ex) when (Database.IsUniqueViolation(ex))
            {
                // Another replica created the first key at the same moment; use theirs.
            }

            await ReloadAsync(ct);
        }
    }

    public async Task ReloadAsync(CancellationToken ct = default)
    {
        await _reloadGate.WaitAsync(ct);
        try
        {
            var now = time.GetUtcNow();
            var keys = await store.ListAsync(ct);
            foreach (var due in keys.Where(k => k.Status == KeyStatus.Pending && k.PromoteAt is { } at && at <= now).OrderBy(k => k.PromoteAt))
            {
                if (await store.ActivateAsync(due.Kid, now, ct))
                {
                    logger.LogInformation("Promoted signing key {Kid} to active", due.Kid);
                }
            }

            if (keys.Any(k => k.Status == KeyStatus.Pending && k.PromoteAt is { } at2 && at2 <= now))
            {
                keys = await store.ListAsync(ct);
            }

            Volatile.Write(ref _snapshot, Build(keys, now));
            await DestroyUnpublishedRetiredKeysAsync(keys, now, ct);
        }
        finally
        {
            _reloadGate.Release();
        }
    }

    /// <summary>
    /// Destroys the stored private key of retired keys that have left the JWKS (retired <see cref="KeyringOptions.RetiredKeyRetention"/>
    /// ago): they were kept forever. The table is written only when a retired key has left the JWKS since the last time.
    /// </summary>
    async Task DestroyUnpublishedRetiredKeysAsync(IReadOnlyList<SigningKey> keys, DateTimeOffset now, CancellationToken ct)
    {
        var cutoff = now - options.RetiredKeyRetention;
        if (keys.Any(k => k.Status == KeyStatus.Retired && k.RetiredAt is { } r && r > _destroyedThrough && r <= cutoff))
        {
            var destroyed = await store.DestroyRetiredPrivateKeysAsync(cutoff, ct);
            _destroyedThrough = cutoff;
            if (destroyed > 0)
            {
                logger.LogInformation("Destroyed the private keys of {Count} retired signing keys no longer published", destroyed);
            }
        }
    }

    KeyringSnapshot Build(IReadOnlyList<SigningKey> keys, DateTimeOffset now)
    {
        var active = keys.FirstOrDefault(k => k.Status == KeyStatus.Active);
        var published = new List<SigningKey>();
        if (active is not null)
        {
            published.Add(active);
        }

        published.AddRange(keys.Where(k => k.Status == KeyStatus.Pending).OrderBy(k => k.CreatedAt));
        var keepRetired = options.RetiredKeyRetention;
        published.AddRange(keys
            .Where(k => k.Status == KeyStatus.Retired && k.RetiredAt is { } r && r + keepRetired > now)
            .OrderByDescending(k => k.RetiredAt));
        return new KeyringSnapshot(active, published, keys);
    }

    /// <summary>Publishes a new pending key that becomes active after <paramref name="propagationDelay"/>.</summary>
    public async Task<string> RotateAsync(TimeSpan? propagationDelay = null, CancellationToken ct = default)
    {
        var delay = propagationDelay ?? options.PropagationDelay;
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var kid = NewKid(key);
        var now = time.GetUtcNow();
        await store.InsertAsync(kid, key, KeyStatus.Pending, now, now + delay, ct);
        if (delay <= TimeSpan.Zero)
        {
            await store.ActivateAsync(kid, now, ct);
        }

        await ReloadAsync(ct);
        return kid;
    }

    /// <summary>
    /// Removes a key from the JWKS at once. If it was the active key, the newest pending key (or a fresh one) takes over
    /// in the same transaction.
    /// </summary>
    public async Task<KeyStatus?> RevokeAsync(string kid, CancellationToken ct = default)
    {
        var (previous, activated) = await store.RevokeAsync(kid, time.GetUtcNow(), () =>
        {
            var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            return (NewKid(key), key);
        }, ct);
        if (activated is not null)
        {
            logger.LogInformation("Revoked active signing key {Kid}; {Next} is active", kid, activated);
        }

        await ReloadAsync(ct);
        return previous;
    }

    /// <summary>Makes an operator's P-256 key the active key (PKCS#8 or SEC1 PEM).</summary>
    public async Task<string> ImportAsync(string pem, string? kid = null, CancellationToken ct = default)
    {
        using var key = ParsePem(pem);
        kid ??= NewKid(key);
        var now = time.GetUtcNow();
        var keys = await store.ListAsync(ct);
        var (x, y) = SigningKey.PublicPoint(key);
        if (keys.FirstOrDefault(k => k.Status == KeyStatus.Revoked && k.X == x && k.Y == y) is { } revoked)
        {
            // Revocation means the private key is out of our hands: the same key under a new kid must not sign again.
            throw new InvalidOperationException($"This key was revoked as '{revoked.Kid}' and cannot be imported again under any kid; generate a new one: openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out staging.pem");
        }

        var existing = keys.FirstOrDefault(k => k.Kid == kid);
        if (existing is { Status: KeyStatus.Active } && existing.X == x && existing.Y == y)
        {
            return kid; // this very key is already the active one
        }

        if (existing is not null)
        {
            // Including another key under the active kid, which answered "imported" while the old key went on signing.
            var which = existing.X == x && existing.Y == y ? "This key already exists" : "A different key already exists";
            throw new InvalidOperationException($"{which} under kid '{kid}' with status {existing.Status.ToString().ToLowerInvariant()}; pass a different --kid.");
        }

        await store.InsertAsync(kid, key, KeyStatus.Pending, now, null, ct);
        await store.ActivateAsync(kid, now, ct);
        await ReloadAsync(ct);
        return kid;
    }

    public static ECDsa ParsePem(string pem)
    {
        if (pem.Contains("ENCRYPTED PRIVATE KEY", StringComparison.Ordinal))
        {
            throw new FormatException("Encrypted PEM keys are not supported; decrypt it with: openssl pkcs8 -topk8 -nocrypt -in key.pem");
        }

        if (!pem.Contains("-----BEGIN PRIVATE KEY-----", StringComparison.Ordinal) && !pem.Contains("-----BEGIN EC PRIVATE KEY-----", StringComparison.Ordinal))
        {
            throw new FormatException("Expected a PKCS#8 ('BEGIN PRIVATE KEY') or SEC1 ('BEGIN EC PRIVATE KEY') PEM holding a P-256 private key.");
        }

        var key = ECDsa.Create();
        try
        {
            key.ImportFromPem(pem);
        }
        catch (Exception ex) when (ex is ArgumentException or CryptographicException)
        {
            key.Dispose();
            throw new FormatException("The PEM is not an EC private key: " + ex.Message, ex);
        }

        var curve = key.ExportParameters(false).Curve;
        if (curve.Oid?.Value != ECCurve.NamedCurves.nistP256.Oid.Value && curve.Oid?.FriendlyName is not ("nistP256" or "ECDSA_P256" or "prime256v1"))
        {
            key.Dispose();
            throw new FormatException("The key is not on curve P-256; ES256 needs a P-256 key (openssl ecparam -name prime256v1 -genkey).");
        }

        return key;
    }

    /// <summary>
    /// A new key's id: the first 16 characters of its RFC 7638 thumbprint (base64url) after any leading '-'. A kid
    /// starting with '-' reads as an option on a command line: <c>loa keys revoke -h6O8…</c> printed the help and
    /// revoked nothing, so the emergency revocation script failed for about one key in 64.
    /// </summary>
    internal static string NewKid(ECDsa key)
    {
        var (x, y) = SigningKey.PublicPoint(key);
        return SigningKey.Thumbprint(x, y).TrimStart('-')[..16];
    }
}

/// <summary>Reloads the keyring on a timer so replicas converge within the reload interval.</summary>
public sealed class KeyringRefresher(Keyring keyring, ILogger<KeyringRefresher> logger) : Microsoft.Extensions.Hosting.BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(keyring.Options.ReloadInterval);
        while (await timer.WaitForNextTickAsync(stoppingToken))
        {
            try
            {
                await keyring.ReloadAsync(stoppingToken);
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                logger.LogWarning(ex, "Keyring reload failed; keeping the last snapshot");
            }
        }
    }
}
