using Arrakis.Shared.Storage;
using Dapper;

namespace Arrakis.Shared.Tests.Storage;

public sealed class PostgresPreparationTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static async Task<long> PreparedAfterRepeatsAsync(StorageOptions options)
    {
        await using var db = new Database(options);
        await using var c = await db.OpenAsync(Ct);
        for (var i = 0; i < 3; i++)
        {
            Assert.Equal(i + 1, await c.ExecuteScalarAsync<long>("SELECT @x::bigint + 1", new { x = (long)i }));
        }

        return await c.ExecuteScalarAsync<long>("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%+ 1%'");
    }

    [Fact]
    public async Task A_statement_run_again_on_a_connection_is_prepared_on_the_server()
    {
        TestStorage.RequirePostgres();
        Assert.Equal(1, await PreparedAfterRepeatsAsync(TestStorage.Options("postgres", "shared")));
    }

    [Fact]
    public async Task A_connection_string_that_turns_preparation_off_is_obeyed()
    {
        TestStorage.RequirePostgres();
        var options = TestStorage.Options("postgres", "shared");
        Assert.Equal(0, await PreparedAfterRepeatsAsync(options with { ConnectionString = options.ConnectionString + ";Max Auto Prepare=0" }));
    }
}
