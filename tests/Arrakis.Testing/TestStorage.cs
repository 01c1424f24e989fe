using Arrakis.Shared.Storage;
using Npgsql;

namespace Arrakis.Testing;

/// <summary>
/// Fresh databases for tests: a temp SQLite directory always, and a fresh PostgreSQL schema when
/// <c>ARRAKIS_TEST_PG</c> holds a connection string (CI sets it, and sets <c>ARRAKIS_REQUIRE_PG=1</c> so a missing
/// server fails instead of skipping).
/// </summary>
public static class TestStorage
{
    static readonly System.Collections.Concurrent.ConcurrentQueue<string> CreatedSchemas = new();

    public static string? PostgresBase => Environment.GetEnvironmentVariable("ARRAKIS_TEST_PG") is { Length: > 0 } s ? s : null;

    public static string? Redis => Environment.GetEnvironmentVariable("ARRAKIS_TEST_REDIS") is { Length: > 0 } s ? s : null;

    public static bool PostgresRequired => Environment.GetEnvironmentVariable("ARRAKIS_REQUIRE_PG") == "1";

    /// <summary>Engines to run storage tests on: SQLite always, PostgreSQL when configured.</summary>
    public static TheoryData<string> Engines()
    {
        var data = new TheoryData<string> { "sqlite" };
        if (PostgresBase is not null || PostgresRequired)
        {
            data.Add("postgres");
        }

        return data;
    }

    /// <summary>Call at the start of a PostgreSQL test: skips when no server is configured (and fails in CI).</summary>
    public static string RequirePostgres()
    {
        if (PostgresBase is { } pg)
        {
            return pg;
        }

        if (PostgresRequired)
        {
            throw new InvalidOperationException("ARRAKIS_REQUIRE_PG=1 but ARRAKIS_TEST_PG is not set.");
        }

        Assert.Skip("PostgreSQL not configured (set ARRAKIS_TEST_PG)");
        return "";
    }

    /// <summary>Configuration entries that point <paramref name="service"/> at a fresh, empty database.</summary>
    public static Dictionary<string, string?> FreshConfig(string engine, string service, string? dataDir = null)
    {
        dataDir ??= TempDir();
        var config = new Dictionary<string, string?> { ["LOA_DATA_DIR"] = dataDir };
        if (engine == "postgres")
        {
            var builder = new NpgsqlConnectionStringBuilder(RequirePostgres())
            {
                SearchPath = TrackSchema($"t_{service}_{Guid.NewGuid():N}"[..30]),
            };
            config["ConnectionStrings:" + char.ToUpperInvariant(service[0]) + service[1..]] = builder.ConnectionString;
        }

        return config;
    }

    /// <summary>
    /// Notes a PostgreSQL schema that a test's database lives in, so <see cref="CreatedSchemaCleanup"/> drops it when the
    /// test assembly has finished. Returns the name.
    /// </summary>
    public static string TrackSchema(string schema)
    {
        CreatedSchemas.Enqueue(schema);
        return schema;
    }

    /// <summary>
    /// Drops every schema noted by <see cref="TrackSchema"/>. A suite run creates hundreds; a local server that keeps
    /// them piles up thousands (4,400 had grown to 3.7 GB) and slows down every later run. Set
    /// <c>ARRAKIS_KEEP_TEST_SCHEMAS=1</c> to keep them for a post-mortem. Returns how many were dropped.
    /// </summary>
    public static async Task<int> DropCreatedSchemasAsync()
    {
        if (PostgresBase is not { } pg || Environment.GetEnvironmentVariable("ARRAKIS_KEEP_TEST_SCHEMAS") == "1")
        {
            return 0;
        }

        var schemas = new List<string>();
        while (CreatedSchemas.TryDequeue(out var schema))
        {
            schemas.Add(schema);
        }

        await using var connection = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(pg) { SearchPath = null, Pooling = false }.ConnectionString);
        await connection.OpenAsync();
        // A few at a time: one DROP of many schemas would take a lock on each of their thousands of objects at once.
        foreach (var chunk in schemas.Distinct(StringComparer.Ordinal).Chunk(16))
        {
            await using var drop = new NpgsqlCommand(
                "DROP SCHEMA IF EXISTS " + string.Join(", ", chunk.Select(s => "\"" + s.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"")) + " CASCADE", connection);
            await drop.ExecuteNonQueryAsync();
        }

        return schemas.Count;
    }

    public static StorageOptions Options(string engine, string service, string? dataDir = null) =>
        StorageOptions.Resolve(new ConfigurationBuilder().AddInMemoryCollection(FreshConfig(engine, service, dataDir)).Build(), service);

    public static string TempDir()
    {
        var dir = Path.Combine(Path.GetTempPath(), "arrakis-tests", Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(dir);
        return dir;
    }

    /// <summary>
    /// Runs <paramref name="start"/> again (it must pick fresh ports each time) when a port from <see cref="FreePort"/>
    /// was taken by someone else before the bind: the OS hands the same ephemeral range to outgoing connections.
    /// </summary>
    public static async Task<T> RetryOnPortClashAsync<T>(Func<Task<T>> start, int attempts = 5)
    {
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                return await start();
            }
            catch (Exception ex) when (attempt < attempts && IsAddressInUse(ex))
            {
            }
        }
    }

    static bool IsAddressInUse(Exception? ex) => ex switch
    {
        null => false,
        Microsoft.AspNetCore.Connections.AddressInUseException => true,
        System.Net.Sockets.SocketException { SocketErrorCode: System.Net.Sockets.SocketError.AddressAlreadyInUse } => true,
        AggregateException a => a.InnerExceptions.Any(IsAddressInUse),
        _ => IsAddressInUse(ex.InnerException),
    };

    public static int FreePort()
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
    }
}
