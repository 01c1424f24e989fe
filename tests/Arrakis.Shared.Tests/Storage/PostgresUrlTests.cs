using Arrakis.Shared.Storage;
using Dapper;
using Npgsql;

namespace Arrakis.Shared.Tests.Storage;

public sealed class PostgresUrlTests
{
    static NpgsqlConnectionStringBuilder Parse(string url) => new(PostgresUrl.ToNpgsql(url));

    static StorageOptions Resolve(string connectionString) => StorageOptions.Resolve(
        new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["ConnectionStrings:Freeside"] = connectionString,
            ["LOA_DATA_DIR"] = TestStorage.TempDir(),
        }).Build(), "freeside");

    [Fact]
    public void A_url_becomes_its_host_port_user_password_database_and_libpq_parameters()
    {
        var b = Parse("postgres://app%40rds:p%40ss%3Aw%2Fo%20rd@db.example.com:6543/arra%20kis"
            + "?sslmode=verify-full&sslrootcert=%2Fcerts%2Frds.pem&connect_timeout=7&application_name=loa&target_session_attrs=read-write");
        Assert.Equal(("db.example.com", 6543, "app@rds", "p@ss:w/o rd", "arra kis"), (b.Host, b.Port, b.Username, b.Password, b.Database));
        Assert.Equal((SslMode.VerifyFull, "/certs/rds.pem", 7, "loa", "read-write"), (b.SslMode, b.RootCertificate, b.Timeout, b.ApplicationName, b.TargetSessionAttributes));
    }

    [Theory]
    [InlineData("postgresql://db/arrakis", "db", 5432, null, null, "arrakis")]
    [InlineData("POSTGRES://u@db", "db", 5432, "u", null, null)]
    [InlineData("postgres://u:@[::1]:5433/x", "::1", 5433, "u", null, "x")]
    [InlineData("postgres://u:pa@ss@db/x", "db", 5432, "u", "pa@ss", "x")]
    public void Url_forms_default_the_port_and_leave_out_what_they_do_not_give(string url, string host, int port, string? user, string? password, string? database)
    {
        var b = Parse(url);
        Assert.Equal((host, port, user, password, database), (b.Host, b.Port, b.Username, b.Password, b.Database));
    }

    [Fact]
    public void Query_parameters_may_also_be_npgsql_keywords()
    {
        var b = Parse("postgres://db/x?Maximum%20Pool%20Size=60&sslmode=require&Pooling=false&channel_binding=require");
        Assert.Equal((60, SslMode.Require, false, ChannelBinding.Require), (b.MaxPoolSize, b.SslMode, b.Pooling, b.ChannelBinding));
    }

    [Theory]
    [InlineData("postgres://db/x?search_path=tenant_a", "tenant_a", null)]
    [InlineData("postgres://db/x?options=-csearch_path%3Dtenant_a", "tenant_a", null)]
    [InlineData("postgres://db/x?options=-c%20search_path%3Dtenant_a%20-c%20statement_timeout%3D5000", "tenant_a", "-c statement_timeout=5000")]
    [InlineData("postgres://db/x?options=--statement_timeout%3D5000%20--search_path%3Dtenant_a", "tenant_a", "--statement_timeout=5000")]
    [InlineData("postgres://db/x?options=-c%20statement_timeout%3D5000", null, "-c statement_timeout=5000")]
    public void Search_path_comes_from_its_own_parameter_or_out_of_options(string url, string? searchPath, string? options)
    {
        var b = Parse(url);
        Assert.Equal((searchPath, options), (b.SearchPath, b.Options));
    }

    [Fact]
    public void Storage_takes_the_schema_from_the_url_or_else_the_service_name()
    {
        var named = Resolve("postgres://u:pw@db:5433/arrakis?sslmode=require&search_path=tenant_a");
        Assert.Equal((StorageEngine.Postgres, "tenant_a"), (named.Engine, named.Schema));
        var b = new NpgsqlConnectionStringBuilder(named.ConnectionString);
        Assert.Equal(("db", 5433, "u", "pw", "arrakis", SslMode.Require, "tenant_a"), (b.Host, b.Port, b.Username, b.Password, b.Database, b.SslMode, b.SearchPath));

        var unnamed = Resolve("postgresql://u@db/arrakis");
        Assert.Equal(("freeside", "freeside"), (unnamed.Schema, new NpgsqlConnectionStringBuilder(unnamed.ConnectionString).SearchPath));
    }

    [Fact]
    public void A_key_value_connection_string_is_left_as_it_is()
    {
        const string KeyValue = "Host=db;Port=5433;Username=u;Password=p;Database=x";
        Assert.Same(KeyValue, PostgresUrl.ToNpgsql(KeyValue));
        Assert.Equal("db", new NpgsqlConnectionStringBuilder(Resolve(KeyValue).ConnectionString).Host);
    }

    [Theory]
    [InlineData("postgres://u:s3cret@db:port/x", "the port is not a number")]
    [InlineData("postgres://u:s3cret@db:70000/x", "the port is not a number")]
    [InlineData("postgres://u:s3cret@/x", "it has no host")]
    [InlineData("postgres://u:s3cret@[::1/x", "no closing ']'")]
    [InlineData("postgres://u:s3cret@a:5432,b:5432/x", "several hosts")]
    [InlineData("postgres://u:s3cret@db/x?sslmode=sometimes", "the value of 'sslmode'")]
    [InlineData("postgres://u:s3cret@db/x?colour=blue", "'colour' is neither")]
    [InlineData("postgres://u:s3cret@db/x?sslmode", "'sslmode' has no value")]
    [InlineData("postgres://u:s3/cret@db/x", "an '@' comes after the first '/' or '?'")]
    [InlineData("postgres://u:s3?cret=@db/x", "an '@' comes after the first '/' or '?'")]
    public void A_malformed_url_names_the_problem_and_the_expected_form_but_not_the_password(string url, string problem)
    {
        var ex = Assert.Throws<FormatException>(() => PostgresUrl.ToNpgsql(url));
        Assert.Contains(problem, ex.Message, StringComparison.Ordinal);
        Assert.Contains("postgres://user:password@host:5432/database?sslmode=require", ex.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("cret", ex.Message, StringComparison.Ordinal);

        var startup = Assert.Throws<ConnectionStringException>(() => Resolve(url));
        Assert.StartsWith("ConnectionStrings:Freeside: Not a usable PostgreSQL URL: ", startup.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_database_opened_from_a_postgres_url_reaches_the_test_server_in_the_urls_schema()
    {
        var pg = new NpgsqlConnectionStringBuilder(TestStorage.RequirePostgres());
        var schema = TestStorage.TrackSchema("t_url_" + Guid.NewGuid().ToString("N")[..12]);
        var user = Uri.EscapeDataString(pg.Username!) + (pg.Password is { } pw ? ":" + Uri.EscapeDataString(pw) : "");
        var url = $"postgres://{user}@{pg.Host}:{pg.Port}/{Uri.EscapeDataString(pg.Database!)}?options=-csearch_path%3D{schema}&application_name=url-test";

        await using var db = new Database(Resolve(url));
        await new Migrator(db).ApplyAsync([new("svc.001_url", "CREATE TABLE url_probe (id TEXT PRIMARY KEY)")], TestContext.Current.CancellationToken);
        await using var c = await db.OpenAsync(TestContext.Current.CancellationToken);
        var (database, currentSchema, application) = await c.QuerySingleAsync<(string, string, string)>(
            "SELECT current_database(), current_schema(), current_setting('application_name')");
        Assert.Equal((pg.Database, schema, "url-test"), (database, currentSchema, application));
        Assert.Equal(1L, await c.ExecuteScalarAsync<long>("SELECT count(*) FROM information_schema.tables WHERE table_schema = @schema AND table_name = 'url_probe'", new { schema }));
    }
}
