using Arrakis.Shared.Storage;
using Dapper;

namespace Arrakis.Shared.Tests.Storage;

public sealed class MigratorTests
{
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Migrations_apply_once_in_order_and_a_second_run_applies_nothing(string engine)
    {
        await using var db = new Database(TestStorage.Options(engine, "freeside"));
        var migrator = new Migrator(db);
        Migration[] migrations =
        [
            new("svc.002_b", "ALTER TABLE demo ADD COLUMN extra TEXT NULL"),
            new("svc.001_a", "CREATE TABLE demo (id TEXT PRIMARY KEY, amount BIGINT NOT NULL);\nINSERT INTO demo (id, amount) VALUES ('x', 5)"),
        ];

        var first = await migrator.ApplyAsync(migrations, TestContext.Current.CancellationToken);
        var second = await migrator.ApplyAsync(migrations, TestContext.Current.CancellationToken);

        Assert.Equal(["svc.001_a", "svc.002_b"], first);
        Assert.Empty(second);
        await using var connection = await db.OpenAsync(TestContext.Current.CancellationToken);
        Assert.Equal(5L, await connection.ExecuteScalarAsync<long>("SELECT amount FROM demo WHERE id = 'x'"));
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Concurrent_migrators_apply_each_migration_exactly_once(string engine)
    {
        var options = TestStorage.Options(engine, "freeside");
        Migration[] migrations = [new("svc.001_a", "CREATE TABLE demo2 (id TEXT PRIMARY KEY)")];
        var results = await Task.WhenAll(Enumerable.Range(0, 4).Select(async _ =>
        {
            await using var db = new Database(options);
            return await new Migrator(db).ApplyAsync(migrations, TestContext.Current.CancellationToken);
        }));
        Assert.Equal(1, results.Sum(r => r.Count));
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Unique_violations_are_recognised_on_both_engines(string engine)
    {
        await using var db = new Database(TestStorage.Options(engine, "freeside"));
        await new Migrator(db).ApplyAsync([new("svc.001_u", "CREATE TABLE uniq (id TEXT PRIMARY KEY)")], TestContext.Current.CancellationToken);
        await using var connection = await db.OpenAsync(TestContext.Current.CancellationToken);
        await connection.ExecuteAsync("INSERT INTO uniq (id) VALUES ('a')");
        var ex = await Assert.ThrowsAnyAsync<System.Data.Common.DbException>(() => connection.ExecuteAsync("INSERT INTO uniq (id) VALUES ('a')"));
        Assert.True(Database.IsUniqueViolation(ex));
    }

    [Fact]
    public async Task A_dollar_quoted_function_body_with_semicolons_is_one_statement()
    {
        var pg = TestStorage.RequirePostgres();
        Assert.NotEmpty(pg);
        await using var db = new Database(TestStorage.Options("postgres", "freeside"));
        const string Script = """
            -- a table, then a function whose body has statements of its own
            CREATE TABLE counter (id INT PRIMARY KEY, n BIGINT NOT NULL);
            INSERT INTO counter (id, n) VALUES (1, 0);
            CREATE OR REPLACE FUNCTION bump(p_by BIGINT) RETURNS BIGINT LANGUAGE plpgsql AS $$
            DECLARE
                v_n BIGINT;
            BEGIN
                UPDATE counter SET n = n + p_by WHERE id = 1;
                SELECT n INTO v_n FROM counter WHERE id = 1;
                RETURN v_n;
            END;
            $$;
            SELECT bump(2);
            """;
        await new Migrator(db).ApplyAsync([new("svc.001_f", Script)], TestContext.Current.CancellationToken);
        await using var connection = await db.OpenAsync(TestContext.Current.CancellationToken);
        Assert.Equal(5L, await connection.ExecuteScalarAsync<long>("SELECT bump(3)"));
    }

    [Fact]
    public async Task Sqlite_databases_use_wal_under_the_data_directory()
    {
        var dir = TestStorage.TempDir();
        await using var db = new Database(TestStorage.Options("sqlite", "dixie", dir));
        await using var connection = await db.OpenAsync(TestContext.Current.CancellationToken);
        Assert.Equal("wal", await connection.ExecuteScalarAsync<string>("PRAGMA journal_mode"));
        Assert.True(File.Exists(Path.Combine(dir, "dixie.db")));
    }
}
