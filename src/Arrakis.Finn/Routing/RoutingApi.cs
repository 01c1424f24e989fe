using System.Text.Json;
using Arrakis.Finn.Identity;
using Arrakis.Shared.Http;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Arrakis.Finn.Routing;

public static class RoutingSetup
{
    /// <summary>
    /// Registers <see cref="ReputationRouter"/> as <see cref="IModelRouter"/> with AddSingleton, so it wins over a
    /// TryAdd default registered before or after it.
    /// </summary>
    public static WebApplicationBuilder AddReputationRouting(this WebApplicationBuilder builder)
    {
        var options = builder.Configuration.GetSection(RoutingOptions.Section).Get<RoutingOptions>() ?? new RoutingOptions();
        options.Validate();
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton<RoutingModeSwitch>();
        builder.Services.AddSingleton<IReputationSource, DixieReputationSource>();
        builder.Services.AddSingleton<IModelRouter, ReputationRouter>();
        return builder;
    }
}

public static partial class RoutingApi
{
    /// <summary><c>GET|POST /api/v1/routing/mode</c> with a freeside token: read or switch the mode at run time.</summary>
    public static IEndpointRouteBuilder MapRoutingApi(this IEndpointRouteBuilder app)
    {
        app.MapGet("/api/v1/routing/mode", (RoutingModeSwitch mode) => Results.Json(new { mode = RoutingOptions.Name(mode.Current) }))
            .RequireToken(IdentitySetup.FreesidePolicy);
        app.MapPost("/api/v1/routing/mode", async (HttpContext http, RoutingModeSwitch mode, ILoggerFactory loggers) =>
        {
            string? requested = null;
            try
            {
                using var doc = await JsonDocument.ParseAsync(http.Request.Body, cancellationToken: http.RequestAborted);
                if (JsonText.Check(doc.RootElement) is { } text)
                {
                    return Problems.Invalid(text.Field, text.Detail);
                }

                if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("mode", out var m) && m.ValueKind == JsonValueKind.String)
                {
                    requested = m.GetString();
                }
            }
            catch (JsonException ex)
            {
                return Problems.Invalid("body", "The body is not valid JSON: " + ex.Message);
            }

            if (!RoutingOptions.TryParseMode(requested, out var next))
            {
                return Problems.Invalid("mode", "mode must be disabled, shadow or enabled.");
            }

            var previous = mode.Current;
            mode.Set(next);
            LogModeChanged(loggers.CreateLogger("Arrakis.Finn.Routing"), RoutingOptions.Name(previous), RoutingOptions.Name(next), http.VerifiedToken().Subject ?? "");
            return Results.Json(new { mode = RoutingOptions.Name(next), previous = RoutingOptions.Name(previous) });
        }).RequireToken(IdentitySetup.FreesidePolicy);
        return app;
    }

    [LoggerMessage(EventId = 3103, EventName = "ROUTING_MODE_CHANGED", Level = LogLevel.Warning, Message = "Routing mode changed from {Previous} to {Mode} by {Subject}")]
    static partial void LogModeChanged(ILogger logger, string previous, string mode, string subject);
}
