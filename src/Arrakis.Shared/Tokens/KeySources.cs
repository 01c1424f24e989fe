using System.Net.Http.Json;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using Microsoft.IdentityModel.Tokens;

namespace Arrakis.Shared.Tokens;

/// <summary>Where a verifier finds an issuer's public keys.</summary>
public interface IKeySource
{
    /// <summary>The keys to try: the one with <paramref name="kid"/>, or every published key when kid is null.</summary>
    ValueTask<IReadOnlyList<SigningKey>> GetKeysAsync(string? kid, CancellationToken ct);
}

/// <summary>Keys from this service's own keyring (freeside verifying user tokens signed with its keys).</summary>
public sealed class LocalKeySource(Keyring keyring) : IKeySource
{
    public ValueTask<IReadOnlyList<SigningKey>> GetKeysAsync(string? kid, CancellationToken ct)
    {
        var published = keyring.Current.Published;
        IReadOnlyList<SigningKey> keys = kid is null ? published : published.Where(k => k.Kid == kid).ToList();
        return ValueTask.FromResult(keys);
    }
}

/// <summary>
/// Another service's JWKS over HTTP, cached for at most 30 s and refetched on an unknown kid at most once a second,
/// so a revoked key stops verifying everywhere within a minute. Callers that queue behind a fetch are answered by it,
/// so the fetch runs on its own <see cref="FetchTimeout"/>, not on the request that happened to start it.
/// </summary>
public sealed class RemoteKeySource(HttpClient http, Uri jwksUri, TimeProvider time, ILogger logger) : IKeySource
{
    public static readonly TimeSpan MaxCacheAge = TimeSpan.FromSeconds(30);
    static readonly TimeSpan MinRefetchInterval = TimeSpan.FromSeconds(1);

    /// <summary>How long one fetch may take (jose's default): every verification waiting on it waits this long at most.</summary>
    public static readonly TimeSpan FetchTimeout = TimeSpan.FromSeconds(5);

    readonly SemaphoreSlim _gate = new(1, 1);
    IReadOnlyList<SigningKey> _keys = [];
    DateTimeOffset _fetchedAt = DateTimeOffset.MinValue;
    DateTimeOffset _lastAttempt = DateTimeOffset.MinValue;
    long _fetches; // fetches finished, with or without success

    public Uri JwksUri => jwksUri;

    public async ValueTask<IReadOnlyList<SigningKey>> GetKeysAsync(string? kid, CancellationToken ct)
    {
        var now = time.GetUtcNow();
        var seen = Volatile.Read(ref _fetches);
        if (now - _fetchedAt > MaxCacheAge)
        {
            await RefreshAsync(force: false, seen, ct);
        }
        else if (kid is not null && Volatile.Read(ref _keys).All(k => k.Kid != kid))
        {
            await RefreshAsync(force: true, seen, ct);
        }

        var keys = Volatile.Read(ref _keys);
        return kid is null ? keys : keys.Where(k => k.Kid == kid).ToList();
    }

    async Task RefreshAsync(bool force, long seen, CancellationToken ct)
    {
        await _gate.WaitAsync(ct);
        var fetched = false;
        try
        {
            if (_fetches != seen)
            {
                // A fetch finished since this caller looked: that is its answer. With one fetch each, a burst of tokens
                // with a new kid (or a JWKS that is down) queued every caller behind the others, a second apart.
                return;
            }

            var now = time.GetUtcNow();
            if (!force && now - _fetchedAt <= MaxCacheAge)
            {
                return; // another caller refreshed while we waited
            }

            var sinceLast = now - _lastAttempt;
            if (sinceLast < MinRefetchInterval)
            {
                // Unknown kid right after a fetch: wait out the rate limit rather than fail a token signed by a new key.
                await Task.Delay(MinRefetchInterval - sinceLast, time, ct);
                now = time.GetUtcNow();
            }

            _lastAttempt = now;
            fetched = true;
            await FetchAsync(now);
        }
        finally
        {
            if (fetched)
            {
                Interlocked.Increment(ref _fetches);
            }

            _gate.Release();
        }
    }

    /// <summary>
    /// One fetch, bounded by <see cref="FetchTimeout"/> alone. On the first caller's token, a client hanging up cancelled
    /// it for every caller queued behind it (refused "unknown kid", or with no keys at all once the cache was a minute
    /// old); without a timeout of its own, a black-holed JWKS host held every verification for HttpClient's 100 s.
    /// </summary>
    async Task FetchAsync(DateTimeOffset now)
    {
        using var timeout = new CancellationTokenSource(FetchTimeout, time);
        try
        {
            var doc = await http.GetFromJsonAsync<JwksDocument>(jwksUri, timeout.Token);
            if (doc?.Keys is not { } published)
            {
                throw new System.Text.Json.JsonException("the document has no \"keys\" array; is the URL a JWKS?");
            }

            Volatile.Write(ref _keys, published.Where(k => k is { Kty: "EC", Crv: "P-256", Alg: "ES256" } && Usable(k))
                .Select(k => new SigningKey(k.Kid, KeyStatus.Active, k.X, k.Y, now, null, null, null, null, null))
                .ToList());
            _fetchedAt = now;
        }
        catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException or System.Text.Json.JsonException or NotSupportedException)
        {
            logger.LogWarning("Could not fetch JWKS from {JwksUri}: {Error}", jwksUri,
                ex is TaskCanceledException ? $"no answer within {FetchTimeout.TotalSeconds:0} s" : ex.Message);
            if (time.GetUtcNow() - _fetchedAt > MaxCacheAge * 2)
            {
                // Never verify with keys older than a minute: that is the revocation promise.
                Volatile.Write(ref _keys, []);
            }
        }
    }

    /// <summary>A key the verifier can use: a point on P-256 (one that is not threw on every token, a 500 instead of a 401).</summary>
    bool Usable(JsonWebKeyDto k)
    {
        try
        {
            if (string.IsNullOrEmpty(k.X) || string.IsNullOrEmpty(k.Y))
            {
                throw new FormatException("x and y are required");
            }

            using var key = ECDsa.Create(new ECParameters
            {
                Curve = ECCurve.NamedCurves.nistP256,
                Q = new ECPoint { X = Base64UrlEncoder.DecodeBytes(k.X), Y = Base64UrlEncoder.DecodeBytes(k.Y) },
            });
            return true;
        }
        catch (Exception ex) when (ex is FormatException or ArgumentException or CryptographicException)
        {
            logger.LogWarning("Skipping JWKS key {Kid} from {JwksUri}: {Error}", k.Kid, jwksUri, ex.Message);
            return false;
        }
    }
}
