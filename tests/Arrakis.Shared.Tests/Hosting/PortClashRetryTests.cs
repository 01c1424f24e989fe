using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Logging;

namespace Arrakis.Shared.Tests.Hosting;

/// <summary>The test hosts' answer to a port taken between FreePort() and the bind: start again on fresh ports.</summary>
public sealed class PortClashRetryTests
{
    [Fact]
    public async Task A_host_whose_port_was_taken_is_started_again_on_a_fresh_port_and_other_errors_are_not_retried()
    {
        using var squatter = new TcpListener(IPAddress.Loopback, 0);
        squatter.Start();
        var taken = ((IPEndPoint)squatter.LocalEndpoint).Port;
        var ports = new List<int>();

        var app = await TestStorage.RetryOnPortClashAsync(async () =>
        {
            var port = ports.Count == 0 ? taken : TestStorage.FreePort();
            ports.Add(port);
            var builder = WebApplication.CreateSlimBuilder();
            builder.Logging.ClearProviders();
            builder.WebHost.UseUrls($"http://127.0.0.1:{port}");
            var started = builder.Build();
            await started.StartAsync(TestContext.Current.CancellationToken);
            return started;
        });
        await using (app)
        {
            Assert.Equal(2, ports.Count);
            Assert.Equal(taken, ports[0]);
            Assert.Contains($":{ports[1]}", app.Urls.Single(), StringComparison.Ordinal);
        }

        var calls = 0;
        await Assert.ThrowsAsync<InvalidOperationException>(() => TestStorage.RetryOnPortClashAsync<int>(() =>
        {
            calls++;
            throw new InvalidOperationException("not a port clash");
        }));
        Assert.Equal(1, calls);
    }
}
