using System.Collections.Concurrent;
using System.Data.Common;
using System.Reflection;
using System.Runtime.CompilerServices;
using Dapper;
using Microsoft.Data.Sqlite;

namespace Arrakis.Shared.Storage;

/// <summary>
/// Compiled statements kept on one long-lived SQLite connection (a <see cref="Database"/>'s writer). Microsoft.Data.Sqlite
/// keeps a compiled statement only as long as its command, and Dapper makes a new command for every call, so each hot
/// write parsed and planned its SQL again: about a third of a ledger statement's cost. Only the connection's one user
/// (the holder of the write gate) touches it.
/// </summary>
public sealed class StatementCache : IDisposable
{
    /// <summary>Distinct statements kept per connection; the hot paths use a few dozen. Past this, statements run uncached.</summary>
    public const int Capacity = 128;

    static readonly ConditionalWeakTable<DbConnection, StatementCache> Caches = new();
    readonly SqliteConnection _connection;
    readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);

    StatementCache(SqliteConnection connection) => _connection = connection;

    /// <summary>How many statements are compiled and kept (for tests).</summary>
    public int Count => _entries.Count;

    /// <summary>Keeps compiled statements for <paramref name="connection"/> until <see cref="Detach"/>.</summary>
    public static StatementCache Attach(SqliteConnection connection)
    {
        var cache = new StatementCache(connection);
        Caches.AddOrUpdate(connection, cache);
        return cache;
    }

    /// <summary>Finalizes the kept statements of <paramref name="connection"/> (before it closes).</summary>
    public static void Detach(DbConnection connection)
    {
        if (Caches.TryGetValue(connection, out var cache))
        {
            Caches.Remove(connection);
            cache.Dispose();
        }
    }

    public static StatementCache? For(DbConnection connection) => Caches.TryGetValue(connection, out var cache) ? cache : null;

    /// <summary>The kept command for <paramref name="sql"/>, bound to <paramref name="args"/> and <paramref name="tx"/>; null when full.</summary>
    internal SqliteCommand? Bind(string sql, object? args, DbTransaction? tx)
    {
        var type = args?.GetType();
        if (!_entries.TryGetValue(sql, out var entry))
        {
            if (_entries.Count >= Capacity)
            {
                return null;
            }

            var command = _connection.CreateCommand();
            command.CommandText = sql;
            entry = new Entry(command);
            _entries.Add(sql, entry);
        }

        var cmd = entry.Command;
        cmd.Transaction = (SqliteTransaction?)tx;
        var getters = type is null ? [] : Getters.For(type);
        if (!ReferenceEquals(entry.ArgsType, type))
        {
            cmd.Parameters.Clear();
            foreach (var (name, _) in getters)
            {
                cmd.Parameters.Add(new SqliteParameter(name, null));
            }

            entry.ArgsType = type;
        }

        for (var i = 0; i < getters.Length; i++)
        {
            cmd.Parameters[i].Value = getters[i].Get(args!) ?? DBNull.Value;
        }

        return cmd;
    }

    public void Dispose()
    {
        foreach (var entry in _entries.Values)
        {
            entry.Command.Dispose();
        }

        _entries.Clear();
    }

    sealed class Entry(SqliteCommand command)
    {
        public SqliteCommand Command { get; } = command;

        public Type? ArgsType { get; set; }
    }

    /// <summary>Parameter names (<c>@property</c>) and value getters of an argument object's public properties.</summary>
    static class Getters
    {
        static readonly ConcurrentDictionary<Type, (string Name, Func<object, object?> Get)[]> ByType = new();

        public static (string Name, Func<object, object?> Get)[] For(Type type) => ByType.GetOrAdd(type, static t =>
            [.. t.GetProperties(BindingFlags.Public | BindingFlags.Instance)
                .Where(p => p.GetIndexParameters().Length == 0)
                .Select(p => ("@" + p.Name, (Func<object, object?>)p.GetValue))]);
    }
}

/// <summary>
/// Dapper-shaped calls that run on a connection's <see cref="StatementCache"/> when it has one (the SQLite writer), and
/// through Dapper otherwise. Arguments are an object whose public properties are the <c>@name</c> parameters.
/// </summary>
public static class CachedSql
{
    public static Task<int> ExecAsync(this DbConnection c, string sql, object? args, DbTransaction? tx = null)
    {
        if (args is SqlMapper.IDynamicParameters || StatementCache.For(c)?.Bind(sql, args, tx) is not { } cmd)
        {
            return c.ExecuteAsync(sql, args, tx);
        }

        return Task.FromResult(cmd.ExecuteNonQuery());
    }

    /// <summary>The first row mapped to <typeparamref name="T"/> (by column name, as Dapper does), or default when there is none.</summary>
    public static Task<T?> RowAsync<T>(this DbConnection c, string sql, object? args, DbTransaction? tx = null)
    {
        if (args is SqlMapper.IDynamicParameters || StatementCache.For(c)?.Bind(sql, args, tx) is not { } cmd)
        {
            return c.QueryFirstOrDefaultAsync<T>(sql, args, tx);
        }

        using var reader = cmd.ExecuteReader();
        return Task.FromResult(reader.Read() ? reader.GetRowParser<T>()(reader) : default);
    }

    /// <summary>Every row mapped to <typeparamref name="T"/>.</summary>
    public static async Task<List<T>> RowsAsync<T>(this DbConnection c, string sql, object? args, DbTransaction? tx = null)
    {
        if (args is SqlMapper.IDynamicParameters || StatementCache.For(c)?.Bind(sql, args, tx) is not { } cmd)
        {
            return (await c.QueryAsync<T>(sql, args, tx)).AsList();
        }

        var rows = new List<T>();
        using var reader = cmd.ExecuteReader();
        if (reader.Read())
        {
            var parse = reader.GetRowParser<T>();
            do
            {
                rows.Add(parse(reader));
            }
            while (reader.Read());
        }

        return rows;
    }
}
