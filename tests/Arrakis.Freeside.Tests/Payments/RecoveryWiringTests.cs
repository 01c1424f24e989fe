using Arrakis.Freeside.Payments;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace Arrakis.Freeside.Tests.Payments;

public sealed class RecoveryWiringTests
{
    /// <summary>The payment tests drive recovery themselves (PaymentHost removes the loop); a real freeside runs it.</summary>
    [Fact]
    public async Task Freeside_runs_the_settlement_recovery_loop()
    {
        await using var p = await Platform.StartAsync();

        Assert.Single(p.Freeside.Services.GetServices<IHostedService>().OfType<SettlementRecovery>());
    }
}
