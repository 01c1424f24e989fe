using Arrakis.Shared.Storage;

/// <summary>
/// Removes what a run wrote: its PostgreSQL schemas (a run leaves 40–90 MB in each, and thousands of leftover schemas
/// slow the server for every later run) and its SQLite data directory.
/// </summary>
static class BenchCleanup
{
    public static async Task DropSchemasAsync(string connectionString, IEnumerable<string> schemas)
    {
        await using var c = new Npgsql.NpgsqlConnection(connectionString);
        await c.OpenAsync();
        foreach (var schema in schemas)
        {
            await using var drop = new Npgsql.NpgsqlCommand($"DROP SCHEMA IF EXISTS \"{schema.Replace("\"", "\"\"", StringComparison.Ordinal)}\" CASCADE", c);
            await drop.ExecuteNonQueryAsync();
        }
    }

    /// <summary>Drops a PostgreSQL database's schema, or deletes a SQLite database's directory.</summary>
    public static async Task RemoveAsync(StorageOptions options)
    {
        if (options is { Engine: StorageEngine.Postgres, Schema: { } schema })
        {
            await DropSchemasAsync(options.ConnectionString, [schema]);
            return;
        }

        var file = new Microsoft.Data.Sqlite.SqliteConnectionStringBuilder(options.ConnectionString).DataSource;
        DeleteDirectory(Path.GetDirectoryName(file));
    }

    public static void DeleteDirectory(string? dir)
    {
        if (dir is not null && Directory.Exists(dir))
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
