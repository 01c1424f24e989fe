using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Arrakis.Freeside.Ledger;

public static class LedgerSetup
{
    public static WebApplicationBuilder AddLedger(this WebApplicationBuilder builder)
    {
        builder.Services.AddOptions<LedgerOptions>().BindConfiguration(LedgerOptions.Section).ValidateDataAnnotations().ValidateOnStart();
        builder.Services.AddSingleton(sp => sp.GetRequiredService<IOptions<LedgerOptions>>().Value);
        builder.Services.AddSingleton<LedgerMetrics>();
        builder.Services.AddSingleton<Ledger>();
        builder.Services.AddSingleton<UsageStore>();
        builder.Services.AddHostedService<LedgerReaper>();
        return builder;
    }
}
