using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Arrakis.Dixie.Identity;

public static class IdentityApi
{
    public static IEndpointRouteBuilder MapIdentityApi(this IEndpointRouteBuilder app)
    {
        app.MapGet("/api/v1/auth/whoami", (HttpContext http) => TypedResults.Ok(new { service = DixieService.Name, claims = TokenEndpoints.ClaimsOf(http.VerifiedToken()) }))
            .RequireToken(IdentitySetup.ServicePolicy);
        return app;
    }
}
