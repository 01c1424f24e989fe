using System.Data.Common;
using System.Reflection;
using Dapper;

namespace Arrakis.Shared.Storage;

/// <summary>A versioned schema step. Ids sort in apply order, e.g. <c>shared.001_keyring</c>, <c>freeside.001_ledger</c>.</summary>
public sealed record Migration(string Id, string Sql);

/// <summary>
/// Applies embedded <c>*.sql</c> migrations once each, recording them in <c>schema_migrations</c>. A file named
/// <c>x.postgres.sql</c> or <c>x.sqlite.sql</c> replaces <c>x.sql</c> on that engine; everything else is portable SQL.
/// </summary>
public sealed class Migrator(Database database)
{
    public static IReadOnlyList<Migration> FromAssembly(Assembly assembly, StorageEngine engine)
    {
        var dialect = engine == StorageEngine.Postgres ? ".postgres.sql" : ".sqlite.sql";
        var other = engine == StorageEngine.Postgres ? ".sqlite.sql" : ".postgres.sql";
        var found = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var name in assembly.GetManifestResourceNames().Where(n => n.EndsWith(".sql", StringComparison.Ordinal)))
        {
            if (name.EndsWith(other, StringComparison.Ordinal))
            {
                continue;
            }

            var specific = name.EndsWith(dialect, StringComparison.Ordinal);
            var id = name[..^(specific ? dialect.Length : ".sql".Length)];
            id = id[(id.IndexOf(".Migrations.", StringComparison.Ordinal) + ".Migrations.".Length)..];
            if (!specific && found.ContainsKey(id))
            {
                continue;
            }

            using var stream = assembly.GetManifestResourceStream(name)!;
            using var reader = new StreamReader(stream);
            found[id] = reader.ReadToEnd();
        }

        return found.Select(kv => new Migration(kv.Key, kv.Value)).ToList();
    }

    public async Task<IReadOnlyList<string>> ApplyAsync(IEnumerable<Migration> migrations, CancellationToken ct = default)
    {
        var applied = new List<string>();
        await using var connection = await database.OpenAsync(ct);
        await using var tx = await Database.BeginWriteAsync(connection, ct);
        if (database.IsPostgres)
        {
            // Replicas starting together migrate one at a time. The lock is keyed on the schema's name (current_schema() is
            // null until the schema exists), and it also covers CREATE SCHEMA IF NOT EXISTS, which is not safe when raced.
            await connection.ExecuteAsync("SELECT pg_advisory_xact_lock(hashtext(@schema))", new { schema = database.Options.Schema }, tx);
            await connection.ExecuteAsync($"CREATE SCHEMA IF NOT EXISTS \"{database.Options.Schema}\"", transaction: tx);
        }

        await connection.ExecuteAsync(
            "CREATE TABLE IF NOT EXISTS schema_migrations (id TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)", transaction: tx);
        var done = (await connection.QueryAsync<string>("SELECT id FROM schema_migrations", transaction: tx)).ToHashSet();
        foreach (var migration in migrations.OrderBy(m => m.Id.StartsWith("shared.", StringComparison.Ordinal) ? 0 : 1).ThenBy(m => m.Id, StringComparer.Ordinal))
        {
            if (done.Contains(migration.Id))
            {
                continue;
            }

            await ExecuteScriptAsync(connection, tx, migration.Sql);
            await connection.ExecuteAsync(
                "INSERT INTO schema_migrations (id, applied_at) VALUES (@id, @at)",
                new { id = migration.Id, at = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() }, tx);
            applied.Add(migration.Id);
        }

        await tx.CommitAsync(ct);
        return applied;
    }

    static async Task ExecuteScriptAsync(DbConnection connection, DbTransaction tx, string sql)
    {
        foreach (var statement in Statements(sql))
        {
            var text = string.Join('\n', statement.Split('\n').Where(l => !l.TrimStart().StartsWith("--", StringComparison.Ordinal))).TrimEnd(';').Trim();
            if (text.Length > 0)
            {
                await connection.ExecuteAsync(text, transaction: tx);
            }
        }
    }

    /// <summary>Splits a script at lines ending in <c>;</c>, except inside <c>$$</c> quotes (PL/pgSQL function bodies).</summary>
    internal static IEnumerable<string> Statements(string sql)
    {
        var current = new System.Text.StringBuilder();
        var quoted = false;
        foreach (var line in sql.ReplaceLineEndings("\n").Split('\n'))
        {
            current.Append(line).Append('\n');
            quoted ^= (line.Split("$$").Length - 1) % 2 == 1;
            if (!quoted && line.TrimEnd().EndsWith(';'))
            {
                yield return current.ToString().Trim();
                current.Clear();
            }
        }

        if (current.ToString().Trim() is { Length: > 0 } rest)
        {
            yield return rest;
        }
    }
}
