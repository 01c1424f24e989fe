using Arrakis.Finn.Inference.Providers;
using Arrakis.Finn.Routing;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace Arrakis.Finn.Inference;

public static class InferenceSetup
{
    public static WebApplicationBuilder AddInference(this WebApplicationBuilder builder)
    {
        builder.Services.AddInference(builder.Configuration);
        return builder;
    }

    /// <summary>Pools, providers, breakers, the default router and pool health. Fails fast on a bad pool configuration.</summary>
    public static IServiceCollection AddInference(this IServiceCollection services, IConfiguration configuration)
    {
        var catalog = LoadCatalog(configuration);
        services.TryAddSingleton(catalog);
        services.TryAddSingleton(TimeProvider.System);

        services.AddOptions<InferenceOptions>().Bind(configuration.GetSection(InferenceOptions.Section)).ValidateOnStart();
        services.AddSingleton<IValidateOptions<InferenceOptions>, InferenceOptionsValidator>();
        services.AddOptions<LocalProviderOptions>().Bind(configuration.GetSection(LocalProviderOptions.Section))
            .Validate(o => o.FailureRate is >= 0 and <= 1 && o.Models.Values.All(m => m.FailureRate is null or (>= 0 and <= 1)), "Providers:Local failure rates must be in [0,1].")
            .Validate(o => LocalProviderOptions.Kinds.Contains(o.FailureKind) && o.Models.Values.All(m => m.FailureKind is null || LocalProviderOptions.Kinds.Contains(m.FailureKind)),
                "Providers:Local FailureKind must be error, rate_limit, timeout or malformed.")
            .ValidateOnStart();
        services.AddOptions<OpenAiProviderOptions>().Bind(configuration.GetSection(OpenAiProviderOptions.Section));
        services.AddOptions<AnthropicProviderOptions>().Bind(configuration.GetSection(AnthropicProviderOptions.Section));

        // Our own per-attempt timeout governs vendor calls, so the HttpClient never cuts a long stream short.
        services.AddHttpClient(OpenAiProvider.HttpClientName, c => c.Timeout = Timeout.InfiniteTimeSpan);
        services.AddHttpClient(AnthropicProvider.HttpClientName, c => c.Timeout = Timeout.InfiniteTimeSpan);
        services.AddSingleton<IInferenceProvider, LocalProvider>();
        services.AddSingleton<IInferenceProvider, OpenAiProvider>();
        services.AddSingleton<IInferenceProvider, AnthropicProvider>();

        services.AddSingleton<ModelBreakers>();
        services.AddSingleton<InferenceMetrics>();
        services.AddSingleton<InferenceEngine>();
        services.TryAddSingleton<IModelRouter, DeterministicRouter>();
        services.AddSingleton<IHealthContributor, PoolHealth>();
        return services;
    }

    /// <summary>The pool catalog (<see cref="PoolCatalog.FromConfiguration"/>), refused at start-up when a pool is unusable.</summary>
    public static PoolCatalog LoadCatalog(IConfiguration configuration)
    {
        var catalog = PoolCatalog.FromConfiguration(configuration);
        Validate(catalog);
        return catalog;
    }

    static void Validate(PoolCatalog catalog)
    {
        string[] providers = ["local", "openai", "anthropic"];
        foreach (var (id, pool) in catalog.Pools)
        {
            if (pool.Models.Count == 0)
            {
                throw new OptionsValidationException(PoolCatalog.Section, typeof(PoolCatalog), [$"Pool '{id}' has no models."]);
            }

            foreach (var model in pool.Models)
            {
                if (string.IsNullOrWhiteSpace(model.Id) || !providers.Contains(model.Provider, StringComparer.OrdinalIgnoreCase))
                {
                    throw new OptionsValidationException(PoolCatalog.Section, typeof(PoolCatalog),
                        [$"Pool '{id}' has a model with id '{model.Id}' and provider '{model.Provider}'; ids are required and providers are local, openai or anthropic."]);
                }
            }

            // Breakers, health and reputation are kept per model id, so a second entry could never be a fallback:
            // it is a copy-paste slip (often a vendor model listed twice under one id), caught here instead of later.
            if (pool.Models.GroupBy(m => m.Id, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1) is { } twice)
            {
                throw new OptionsValidationException(PoolCatalog.Section, typeof(PoolCatalog),
                    [$"Pool '{id}' lists model '{twice.Key}' {twice.Count()} times; each model id may appear once in a pool (give each entry its own Id and set VendorModel)."]);
            }

            if (pool.DefaultMaxTokens < 1 || pool.MaxTokensLimit < pool.DefaultMaxTokens)
            {
                throw new OptionsValidationException(PoolCatalog.Section, typeof(PoolCatalog), [$"Pool '{id}' needs 1 <= DefaultMaxTokens <= MaxTokensLimit."]);
            }
        }
    }
}
