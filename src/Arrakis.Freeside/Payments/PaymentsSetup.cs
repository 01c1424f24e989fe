using Arrakis.Shared.Contracts;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
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
            c.Timeout = TimeSpan.FromSeconds(sp.GetRequiredService<IOptions<X402Options>>().Value.FacilitatorTimeoutSeconds);
        });
        services.AddSingleton<SettlementRecovery>();
        services.AddHostedService(sp => sp.GetRequiredService<SettlementRecovery>());
        services.AddHostedService<X402PlaceholderWarning>();
        return builder;
    }
}

/// <summary>
/// Says at start-up, once, when x402 payments would go to the development placeholder (<see cref="X402Options.TestPayTo"/>,
/// a public test account whose private key is well known): fine for <c>loa up</c>, wrong anywhere real money moves.
/// </summary>
public sealed partial class X402PlaceholderWarning(IOptions<X402Options> options, ILogger<X402PlaceholderWarning> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        if (string.Equals(options.Value.PayTo, X402Options.TestPayTo, StringComparison.OrdinalIgnoreCase))
        {
            LogPlaceholder(logger, options.Value.PayTo);
        }

        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    [LoggerMessage(EventId = 6101, EventName = "X402_PAYTO_PLACEHOLDER", Level = LogLevel.Warning,
        Message = "x402 payments go to the development placeholder {PayTo}, a public test account; set X402__PayTo to your own address before accepting payments")]
    static partial void LogPlaceholder(ILogger logger, string payTo);
}
