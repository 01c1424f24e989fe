using System.Net.Http.Json;
using Microsoft.Extensions.Logging;

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
/// so a revoked key stops verifying everywhere within a minute.
/// </summary>
public sealed class RemoteKeySource(HttpClient http, Uri jwksUri, TimeProvider time, ILogger logger) : IKeySource
{
    public static readonly TimeSpan MaxCacheAge = TimeSpan.FromSeconds(30);
    static readonly TimeSpan MinRefetchInterval = TimeSpan.FromSeconds(1);

    readonly SemaphoreSlim _gate = new(1, 1);
    IReadOnlyList<SigningKey> _keys = [];
    DateTimeOffset _fetchedAt = DateTimeOffset.MinValue;
    DateTimeOffset _lastAttempt = DateTimeOffset.MinValue;

    public Uri JwksUri => jwksUri;

    public async ValueTask<IReadOnlyList<SigningKey>> GetKeysAsync(string? kid, CancellationToken ct)
    {
        var now = time.GetUtcNow();
        if (now - _fetchedAt > MaxCacheAge)
        {
            await RefreshAsync(force: false, ct);
        }
        else if (kid is not null && _keys.All(k => k.Kid != kid))
        {
            await RefreshAsync(force: true, ct);
        }

        var keys = _keys;
        return kid is null ? keys : keys.Where(k => k.Kid == kid).ToList();
    }

    async Task RefreshAsync(bool force, CancellationToken ct)
    {
        await _gate.WaitAsync(ct);
        try
        {
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
            }

            _lastAttempt = now;
            var doc = await http.GetFromJsonAsync<JwksDocument>(jwksUri, ct);
            _keys = doc?.Keys.Where(k => k.Kty == "EC" && k.Crv == "P-256" && k.Alg == "ES256")
                .Select(k => new SigningKey(k.Kid, KeyStatus.Active, k.X, k.Y, now, null, null, null, null, null))
                .ToList() ?? [];
            _fetchedAt = now;
        }
        catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException or System.Text.Json.JsonException)
        {
            logger.LogWarning("Could not fetch JWKS from {JwksUri}: {Error}", jwksUri, ex.Message);
            if (time.GetUtcNow() - _fetchedAt > MaxCacheAge * 2)
            {
                // Never verify with keys older than a minute: that is the revocation promise.
                _keys = [];
            }
        }
        finally
        {
            _gate.Release();
        }
    }
}
