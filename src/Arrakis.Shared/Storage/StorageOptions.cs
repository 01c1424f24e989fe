namespace Arrakis.Shared.Storage;

/// <summary>Which engine a service keeps its data in, resolved from configuration.</summary>
public enum StorageEngine
{
    Sqlite,
    Postgres,
}

/// <summary>
/// Storage settings for one service. <c>ConnectionStrings:{Service}</c> selects PostgreSQL (one schema per
/// service, its Search Path or else the service's name), as an Npgsql key=value string or a <c>postgres://</c> URL
/// (<see cref="PostgresUrl"/>); without it the service keeps a SQLite file under <c>LOA_DATA_DIR</c> (default <c>.loa/</c>).
/// </summary>
public sealed record StorageOptions(string Service, StorageEngine Engine, string ConnectionString, string? Schema)
{
    /// <summary>Where <see cref="RequestTimeout"/> is set (<c>Database__RequestTimeout</c>).</summary>
    public const string RequestTimeoutSetting = "Database:RequestTimeout";

    /// <summary>The default of <see cref="RequestTimeout"/>.</summary>
    public static readonly TimeSpan DefaultRequestTimeout = TimeSpan.FromSeconds(5);

    /// <summary>
    /// How long a request-path database operation (the ledger's reserve/finalize/release/renew, the idempotency key's
    /// claim/complete/renew/abandon; dixie's event recording and score reads) may take on PostgreSQL before it fails as the database being unavailable (503), see
    /// <see cref="Database.WithinRequestTimeoutAsync{T}"/>. Background work keeps Npgsql's own timeouts.
    /// </summary>
    public TimeSpan RequestTimeout { get; init; } = DefaultRequestTimeout;

    public static string DataDirectory(IConfiguration configuration)
    {
        var dir = configuration["LOA_DATA_DIR"] ?? Environment.GetEnvironmentVariable("LOA_DATA_DIR");
        return Path.GetFullPath(string.IsNullOrWhiteSpace(dir) ? ".loa" : dir);
    }

    public static StorageOptions Resolve(IConfiguration configuration, string service)
    {
        var key = "ConnectionStrings:" + Capitalize(service);
        var pg = configuration[key];
        if (!string.IsNullOrWhiteSpace(pg))
        {
            Npgsql.NpgsqlConnectionStringBuilder builder;
            try
            {
                builder = new Npgsql.NpgsqlConnectionStringBuilder(PostgresUrl.ToNpgsql(pg));
            }
            catch (Exception ex) when (ex is FormatException or ArgumentException)
            {
                // A keyword Npgsql does not know, or a value it cannot read, is a setting to fix, not a defect.
                throw new ConnectionStringException(key + ": " + ex.Message, ex);
            }

            var schema = string.IsNullOrWhiteSpace(builder.SearchPath) ? service.ToLowerInvariant() : builder.SearchPath;
            builder.SearchPath = schema;
            return new StorageOptions(service, StorageEngine.Postgres, builder.ConnectionString, schema) { RequestTimeout = ReadRequestTimeout(configuration) };
        }

        var dataDir = DataDirectory(configuration);
        Directory.CreateDirectory(dataDir);
        var file = Path.Combine(dataDir, service.ToLowerInvariant() + ".db");
        var sqlite = new Microsoft.Data.Sqlite.SqliteConnectionStringBuilder
        {
            DataSource = file,
            Cache = Microsoft.Data.Sqlite.SqliteCacheMode.Private,
            DefaultTimeout = 30,
            Pooling = true,
        };
        return new StorageOptions(service, StorageEngine.Sqlite, sqlite.ConnectionString, null);
    }

    static TimeSpan ReadRequestTimeout(IConfiguration configuration)
    {
        var value = configuration[RequestTimeoutSetting];
        if (string.IsNullOrWhiteSpace(value))
        {
            return DefaultRequestTimeout;
        }

        if (!TimeSpan.TryParse(value, System.Globalization.CultureInfo.InvariantCulture, out var timeout) || timeout < TimeSpan.FromSeconds(1) || timeout > TimeSpan.FromMinutes(1))
        {
            throw new ConnectionStringException($"{RequestTimeoutSetting} must be between 1 s and 1 min, e.g. 00:00:05; it is '{value}'.");
        }

        return timeout;
    }

    static string Capitalize(string s) => char.ToUpperInvariant(s[0]) + s[1..];
}

/// <summary>
/// A database setting that cannot be used: a <c>ConnectionStrings:&lt;Service&gt;</c> that is neither an Npgsql connection
/// string nor a <c>postgres://</c> URL, or a <c>Database:RequestTimeout</c> out of range.
/// </summary>
public sealed class ConnectionStringException(string message, Exception? inner = null) : InvalidOperationException(message, inner);
