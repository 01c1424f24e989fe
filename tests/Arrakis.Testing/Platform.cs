using Arrakis.Dixie;
using Arrakis.Finn;
using Arrakis.Freeside;
using Microsoft.AspNetCore.Builder;

namespace Arrakis.Testing;

/// <summary>
/// The three services started in-process on free loopback ports, each with a fresh database, talking to each
/// other over real HTTP. Dispose stops them.
/// </summary>
public sealed class Platform : IAsyncDisposable
{
    Platform(WebApplication freeside, WebApplication finn, WebApplication dixie, string freesideUrl, string finnUrl, string dixieUrl, string dataDir)
    {
        Freeside = freeside;
        Finn = finn;
        Dixie = dixie;
        FreesideUrl = freesideUrl;
        FinnUrl = finnUrl;
        DixieUrl = dixieUrl;
        DataDir = dataDir;
    }

    public WebApplication Freeside { get; }

    public WebApplication Finn { get; }

    public WebApplication Dixie { get; }

    public string FreesideUrl { get; }

    public string FinnUrl { get; }

    public string DixieUrl { get; }

    public string DataDir { get; }

    /// <summary>
    /// This platform's Redis key prefix (PostgreSQL platforms with ARRAKIS_TEST_REDIS), so tests running at once keep
    /// their rate-limit counters and replay keys apart: they all use the same seeded community, and with one shared
    /// prefix one test's invokes used up another's per-minute limit (429).
    /// </summary>
    public string? RedisPrefix { get; private set; }

    /// <param name="engine">"sqlite" or "postgres".</param>
    /// <param name="settings">Extra configuration applied to all three services.</param>
    /// <param name="configure">Extra builder configuration, given the service name.</param>
    public static Task<Platform> StartAsync(string engine = "sqlite", IDictionary<string, string?>? settings = null, Action<string, WebApplicationBuilder>? configure = null) =>
        TestStorage.RetryOnPortClashAsync(() => StartOnceAsync(engine, settings, configure));

    static async Task<Platform> StartOnceAsync(string engine, IDictionary<string, string?>? settings, Action<string, WebApplicationBuilder>? configure)
    {
        var dataDir = TestStorage.TempDir();
        var redisPrefix = TestStorage.Redis is not null && engine == "postgres" ? $"arrakis-test-{Guid.NewGuid():N}:" : null;
        var urls = (Freeside: $"http://127.0.0.1:{TestStorage.FreePort()}", Finn: $"http://127.0.0.1:{TestStorage.FreePort()}", Dixie: $"http://127.0.0.1:{TestStorage.FreePort()}");

        string[] Args(string service, string url)
        {
            var all = new Dictionary<string, string?>(TestStorage.FreshConfig(engine, service, dataDir))
            {
                ["urls"] = url,
                ["Services:FreesideUrl"] = urls.Freeside,
                ["Services:FinnUrl"] = urls.Finn,
                ["Services:DixieUrl"] = urls.Dixie,
            };
            if (TestStorage.Redis is { } redis && engine == "postgres")
            {
                all["Redis:Configuration"] = redis;
                all["Redis:KeyPrefix"] = redisPrefix;
            }

            foreach (var (k, v) in settings ?? new Dictionary<string, string?>())
            {
                all[k] = v;
            }

            return all.Where(kv => kv.Value is not null).SelectMany(kv => new[] { "--" + kv.Key, kv.Value! }).ToArray();
        }

        var freeside = await FreesideService.CreateAsync(Args("freeside", urls.Freeside), b => configure?.Invoke("freeside", b));
        var finn = await FinnService.CreateAsync(Args("finn", urls.Finn), b => configure?.Invoke("finn", b));
        var dixie = await DixieService.CreateAsync(Args("dixie", urls.Dixie), b => configure?.Invoke("dixie", b));
        var platform = new Platform(freeside, finn, dixie, urls.Freeside, urls.Finn, urls.Dixie, dataDir) { RedisPrefix = redisPrefix };
        try
        {
            await freeside.StartAsync();
            await finn.StartAsync();
            await dixie.StartAsync();
            return platform;
        }
        catch
        {
            await platform.DisposeAsync(); // e.g. a port taken between FreePort() and the bind; the caller retries on new ports
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var app in new[] { Dixie, Finn, Freeside })
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }
}
