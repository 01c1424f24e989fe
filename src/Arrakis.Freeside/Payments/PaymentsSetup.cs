using Arrakis.Shared.Contracts;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace Arrakis.Freeside.Payments;

public static class PaymentsSetup
{
    /// <summary>
    /// x402 payments. The invoke feature registers <see cref="IPaidInvocation"/>, the ledger registers
    /// <see cref="ICreditNoteSink"/> and may replace <see cref="IPayerCommunityResolver"/>.
    /// </summary>
    public static WebApplicationBuilder AddPayments(this WebApplicationBuilder builder)
    {
        var services = builder.Services;
        services.AddOptions<X402Options>().BindConfiguration(X402Options.Section).ValidateDataAnnotations().ValidateOnStart();
        services.TryAddSingleton(sp => PoolCatalog.FromConfiguration(sp.GetRequiredService<IConfiguration>()));
        services.TryAddSingleton<IPayerCommunityResolver, ClaimCommunityResolver>();
        services.AddSingleton<PaymentRequirementsBuilder>();
        services.AddSingleton<PaymentQuote>();
        services.AddSingleton<AuthorizationVerifier>();
        services.AddSingleton<PaymentStore>();
        services.AddSingleton<PaymentMetrics>();
        services.AddSingleton<PaymentFlow>();
        services.AddSingleton<LegacyProof>();
        services.AddSingleton<FacilitatorSettler>();
        services.AddSingleton<DirectChainSettler>();
        services.AddSingleton<IPaymentSettler>(sp => sp.GetRequiredService<IOptions<X402Options>>().Value.Settler == SettlerKind.Direct
            ? sp.GetRequiredService<DirectChainSettler>()
            : sp.GetRequiredService<FacilitatorSettler>());
        services.AddHttpClient(FacilitatorSettler.ClientName, (sp, c) =>
        {
            c.BaseAddress = new Uri(sp.GetRequiredService<IOptions<X402Options>>().Value.FacilitatorUrl.TrimEnd('/') + "/");
            c.Timeout = TimeSpan.FromSeconds(60);
        });
        services.AddSingleton<SettlementRecovery>();
        services.AddHostedService(sp => sp.GetRequiredService<SettlementRecovery>());
        return builder;
    }
}
