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
            return new StorageOptions(service, StorageEngine.Postgres, builder.ConnectionString, schema);
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

    static string Capitalize(string s) => char.ToUpperInvariant(s[0]) + s[1..];
}

/// <summary>A <c>ConnectionStrings:&lt;Service&gt;</c> setting that is neither an Npgsql connection string nor a <c>postgres://</c> URL.</summary>
public sealed class ConnectionStringException(string message, Exception inner) : InvalidOperationException(message, inner);
