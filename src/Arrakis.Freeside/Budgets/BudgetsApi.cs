using Arrakis.Freeside.Communities;
using Arrakis.Freeside.Identity;
using Arrakis.Shared.Http;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Freeside.Budgets;

public static class BudgetsApi
{
    public static WebApplicationBuilder AddBudgets(this WebApplicationBuilder builder)
    {
        builder.Services.AddSingleton<BudgetStore>();
        return builder;
    }

    public static IEndpointRouteBuilder MapBudgetsApi(this IEndpointRouteBuilder app)
    {
        var communities = app.MapGroup("/api/v1/communities").WithTags("Budgets");
        communities.MapGet("/{id}/budget", GetAsync).RequireToken(IdentitySetup.UserPolicy);
        communities.MapGet("/{id}/usage", UsageReport.GetAsync).RequireToken(IdentitySetup.UserPolicy);
        return app;
    }

    /// <summary>The community a user token acts for: its tenant_id mapped through tenant_aliases.</summary>
    public static async Task<string?> CommunityOfAsync(HttpContext http, CommunityStore communities, CancellationToken ct) =>
        http.VerifiedToken().TryGetPayloadValue<string>("tenant_id", out var tenant) && !string.IsNullOrEmpty(tenant)
            ? await communities.ResolveTenantAsync(tenant, ct)
            : null;

    static async Task<IResult> GetAsync(string id, HttpContext http, CommunityStore communities, BudgetStore budgets, CancellationToken ct)
    {
        var own = await CommunityOfAsync(http, communities, ct);
        if (own != id)
        {
            return Problems.Forbidden(own is null
                ? "The token's tenant_id does not map to any community."
                : $"The token acts for community '{own}', not '{id}'.");
        }

        return await budgets.GetAsync(id, ct) is { } view ? TypedResults.Ok(view) : Problems.NotFound("community", id);
    }
}
