using Arrakis.Freeside.Invoke;
using Arrakis.Shared.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Freeside.Tests.Invoke;

public sealed class FinalizeFailureTests
{
    /// <summary>
    /// A finalize whose write failed because the database was unreachable is answered as every route answers an outage
    /// (503 SERVICE_UNAVAILABLE, Retry-After, the dependency named): the client did nothing wrong and may retry. Any other
    /// failure is a defect: 500 INTERNAL_ERROR. (The flows themselves are covered in InvokeTests with the ledger's fault hook.)
    /// </summary>
    [Fact]
    public async Task A_database_outage_is_503_with_retry_after_and_anything_else_500()
    {
        var outage = new Settlement(SettlementStatus.FinalizeFailed, 0,
            Dependency: ServiceDefaults.UnavailableDependencyOf(new Npgsql.NpgsqlException("Failed to connect to 127.0.0.1:1")));
        var defect = new Settlement(SettlementStatus.FinalizeFailed, 0,
            Dependency: ServiceDefaults.UnavailableDependencyOf(new InvalidOperationException("a bug")));

        var (status, body, headers) = await RenderAsync(outage);
        Assert.Equal(503, status);
        Assert.Equal("SERVICE_UNAVAILABLE", body.GetProperty("error").GetString());
        Assert.Equal("database", body.GetProperty("dependency").GetString());
        Assert.Equal("5", headers["Retry-After"].ToString());
        Assert.Contains("nothing was charged", body.GetProperty("detail").GetString(), StringComparison.Ordinal);

        (status, body, headers) = await RenderAsync(defect);
        Assert.Equal(500, status);
        Assert.Equal("INTERNAL_ERROR", body.GetProperty("error").GetString());
        Assert.False(headers.ContainsKey("Retry-After"));
    }

    static async Task<(int Status, System.Text.Json.JsonElement Body, IHeaderDictionary Headers)> RenderAsync(Settlement settled)
    {
        var (status, problem) = InvokeResponses.FinalizeFailed(settled);
        var services = new ServiceCollection().AddLogging().AddProblemDetails().BuildServiceProvider();
        var http = new DefaultHttpContext { RequestServices = services };
        http.Response.Body = new MemoryStream();
        await problem.ExecuteAsync(http);
        Assert.Equal(status, http.Response.StatusCode);
        http.Response.Body.Position = 0;
        using var doc = await System.Text.Json.JsonDocument.ParseAsync(http.Response.Body);
        return (status, doc.RootElement.Clone(), http.Response.Headers);
    }
}
