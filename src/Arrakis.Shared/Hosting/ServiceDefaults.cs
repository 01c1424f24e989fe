using System.Text.Json;
using Arrakis.Shared.Caching;
using Arrakis.Shared.Storage;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;
using OpenTelemetry.Metrics;
using StackExchange.Redis;

namespace Arrakis.Shared.Hosting;

/// <summary>What every Arrakis service shares: JSON logs, storage, Redis or memory caches, token verification, metrics, problem details.</summary>
public static partial class ServiceDefaults
{
    /// <summary>
    /// The options every service host starts from. Configuration is not reloaded on file changes: the default reload
    /// watches the whole content root recursively, and with the SQLite data directory inside it (<c>.loa/</c>) every
    /// database write woke the file watcher (a sixth of the CPU under load). Restart to apply new settings.
    /// </summary>
    public static WebApplicationOptions HostOptions(string[] args, System.Reflection.Assembly service) => new()
    {
        Args = ["--hostBuilder:reloadConfigOnChange=false", .. args],
        ApplicationName = service.GetName().Name,
    };

    /// <summary>
    /// The largest request body any route reads, unless <c>Kestrel:Limits:MaxRequestBodySize</c> says otherwise (Kestrel's
    /// own default is 30 MB). An invoke's prompt and messages must fit finn's 1 MiB body; this leaves room for a client
    /// that escapes every character (up to 6 bytes each) and bounds what one request can make a service buffer.
    /// </summary>
    public const long MaxRequestBodyBytes = 8 << 20;

    public static WebApplicationBuilder AddServiceDefaults(this WebApplicationBuilder builder, string service)
    {
        RequestLimits.Apply(builder, MaxRequestBodyBytes);

        builder.Logging.ClearProviders();
        builder.Logging.AddConsole(o => o.FormatterName = JsonLinesFormatter.FormatterName)
            .AddConsoleFormatter<JsonLinesFormatter, JsonLinesFormatterOptions>(o => o.Service = service);
        builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
        builder.Logging.AddFilter("Microsoft.Hosting", LogLevel.Information);
        builder.Logging.AddFilter("System.Net.Http.HttpClient", LogLevel.Warning);

        var services = builder.Services;
        services.TryAddSingleton(TimeProvider.System);
        services.AddProblemDetails();
        services.AddExceptionHandler<UnexpectedErrorHandler>();
        // A typed body that does not bind throws, so the error handler answers with the field and the reason instead of a bare 400.
        services.Configure<Microsoft.AspNetCore.Routing.RouteHandlerOptions>(o => o.ThrowOnBadRequest = true);
        services.ConfigureHttpJsonOptions(o =>
        {
            o.SerializerOptions.DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.Never;
            // The web defaults read numbers from strings ("monthlyBudgetCents":"100" set a budget); amounts are JSON numbers.
            o.SerializerOptions.NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.Strict;
            // A name given twice (in any case: names match case-insensitively) is ambiguous; the last one won, so
            // {"amountMicro":1,"amountMicro":7000000} granted 7,000,000. Refused, as the routes that read JSON themselves do.
            o.SerializerOptions.AllowDuplicateProperties = false;
            // Enums by name ("tier":"free", "status":"granted"), as tokens and request bodies spell them, not as ordinals.
            o.SerializerOptions.Converters.Add(new System.Text.Json.Serialization.JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower));
        });

        var storage = StorageOptions.Resolve(builder.Configuration, service);
        services.AddSingleton(storage);
        services.AddSingleton<Database>();
        services.AddHostedService<SqliteCheckpointer>();
        services.AddSingleton<Migrator>();
        services.AddSingleton<IHealthContributor, DatabaseHealth>();

        var redis = builder.Configuration["Redis:Configuration"];
        var redisNames = RedisNamespace.FromConfiguration(builder.Configuration[RedisNamespace.Setting]); // checked with or without Redis
        if (!string.IsNullOrWhiteSpace(redis))
        {
            services.AddSingleton(redisNames);
            services.AddSingleton(sp => RedisConnection.Connect(redis, sp.GetRequiredService<ILoggerFactory>().CreateLogger("Arrakis.Redis")));
            services.AddSingleton<IReplayCache, RedisReplayCache>();
            services.AddSingleton<IInvalidationBus, RedisInvalidationBus>();
            services.AddSingleton<IHealthContributor, RedisHealth>();
        }
        else
        {
            services.AddSingleton<IReplayCache, MemoryReplayCache>();
            services.AddSingleton<IInvalidationBus, MemoryInvalidationBus>();
        }

        services.AddSingleton<TokenVerifier>();
        services.AddSingleton<TokenPolicies>();
        services.AddHttpClient();

        services.AddOpenTelemetry().WithMetrics(m => m
            .AddMeter("Arrakis.*", MetricNames.RuntimeMeter)
            .AddCatalogViews()
            .AddPrometheusExporter());
        builder.AddMetricExport(service);
        return builder;
    }

    /// <summary>
    /// Adds this service's DB-backed signing keyring, its JWKS and a token issuer. <paramref name="longestOtherToken"/>:
    /// the longest token of another kind than user tokens that routes verify against the keyring (retired keys stay
    /// published until it has expired).
    /// </summary>
    public static WebApplicationBuilder AddKeyring(this WebApplicationBuilder builder, TimeSpan? longestOtherToken = null)
    {
        var services = builder.Services;
        services.AddSingleton(_ => KeyProtector.FromConfiguration(builder.Configuration));
        var options = (builder.Configuration.GetSection("Keyring").Get<KeyringOptions>() ?? new KeyringOptions()).Validate();
        services.AddSingleton(longestOtherToken is { } lifetime ? options.AlsoVerifying(lifetime) : options);
        services.AddSingleton<KeyStore>();
        services.AddSingleton<Keyring>();
        services.AddSingleton<TokenIssuer>();
        services.AddSingleton<LocalKeySource>();
        services.AddHostedService<KeyringRefresher>();
        return builder;
    }

    /// <summary>A verifier key source for another service's JWKS.</summary>
    public static RemoteKeySource RemoteKeys(this IServiceProvider sp, string jwksUrl) =>
        new(sp.GetRequiredService<IHttpClientFactory>().CreateClient("jwks"), new Uri(jwksUrl), sp.GetRequiredService<TimeProvider>(),
            sp.GetRequiredService<ILoggerFactory>().CreateLogger("Arrakis.Tokens.Jwks"));

    /// <summary>Runs migrations (and initializes the keyring, when there is one) before the service takes traffic.</summary>
    public static async Task InitializeStorageAsync(this WebApplication app, System.Reflection.Assembly serviceAssembly)
    {
        var db = app.Services.GetRequiredService<Database>();
        var migrations = Migrator.FromAssembly(typeof(ServiceDefaults).Assembly, db.Engine)
            .Concat(Migrator.FromAssembly(serviceAssembly, db.Engine));
        await app.Services.GetRequiredService<Migrator>().ApplyAsync(migrations);
        // Connect to Redis before taking traffic, not on the first burst of requests.
        _ = app.Services.GetService<IConnectionMultiplexer>();
        if (app.Services.GetService<Keyring>() is { } keyring)
        {
            await keyring.InitializeAsync();
        }
    }

    const string MetricsPath = "/metrics";

    public static WebApplication UseServiceDefaults(this WebApplication app)
    {
        app.Use(RequestMetrics.Middleware);
        app.Use(RequestLimits.RefuseOversizedHeadAsync);
        app.UseExceptionHandler();
        app.UseStatusCodePages(async ctx =>
        {
            var response = ctx.HttpContext.Response;
            if (response.ContentLength is null && string.IsNullOrEmpty(response.ContentType))
            {
                var status = response.StatusCode;
                var error = status switch
                {
                    404 => "NOT_FOUND",
                    405 => "METHOD_NOT_ALLOWED",
                    413 => "REQUEST_TOO_LARGE",
                    415 => "UNSUPPORTED_MEDIA_TYPE",
                    _ => "HTTP_" + status,
                };
                var request = ctx.HttpContext.Request;
                var detail = status switch
                {
                    404 => "No route matches " + request.Path + ".",
                    405 => $"{request.Method} is not allowed on {request.Path}; it takes {response.Headers.Allow}.",
                    // A typed body over the limit is refused while binding, without the exception the handler above answers.
                    413 => $"Request body too large. The max request body size is {ctx.HttpContext.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize} bytes.",
                    415 => $"{request.Method} {request.Path} takes a JSON body: send Content-Type: application/json"
                        + (string.IsNullOrEmpty(request.ContentType) ? " (none was sent)." : $" (not '{request.ContentType}')."),
                    _ => "The request could not be served.",
                };
                var field = status == 415 ? new Dictionary<string, object?> { ["field"] = "Content-Type" } : null;
                await Http.Problems.Create(status, error, detail, field).ExecuteAsync(ctx.HttpContext);
            }
        });
        // The scrape route answers only its exact spelling. The public load balancer refuses "/metrics" for the internet
        // (deploy/terraform/alb.tf), but its path match is case-sensitive and does not decode, while routing does both:
        // "/METRICS" or "/%6Detrics" would otherwise reach the scrape from outside.
        app.Use((context, next) =>
        {
            if (context.Request.Path.Value?.TrimEnd('/').Equals(MetricsPath, StringComparison.OrdinalIgnoreCase) == true
                && (context.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpRequestFeature>()?.RawTarget ?? "").Split('?', 2)[0] != MetricsPath)
            {
                context.Response.StatusCode = StatusCodes.Status404NotFound;
                return Task.CompletedTask;
            }

            return next(context);
        });
        // Bearer tokens are checked after routing and before a route binds its parameters (TokenEndpoints.RequireToken).
        app.Use(TokenEndpoints.VerifyTokensAsync);
        app.MapPrometheusScrapingEndpoint(MetricsPath);
        return app;
    }

    /// <summary>
    /// "database" or "redis" when the exception means that dependency is unreachable or refusing work for now (the
    /// request may be retried: 503), null for anything else (a defect: 500). The rule the error handler answers by.
    /// </summary>
    public static string? UnavailableDependencyOf(Exception exception) => UnexpectedErrorHandler.UnavailableDependency(exception);

    sealed partial class UnexpectedErrorHandler(ILogger<UnexpectedErrorHandler> logger) : IExceptionHandler
    {
        public async ValueTask<bool> TryHandleAsync(HttpContext httpContext, Exception exception, CancellationToken cancellationToken)
        {
            if (exception is BadHttpRequestException { StatusCode: StatusCodes.Status413PayloadTooLarge } tooLarge)
            {
                await Http.Problems.Create(413, "REQUEST_TOO_LARGE", tooLarge.Message).ExecuteAsync(httpContext);
                return true;
            }

            if (exception is BadHttpRequestException { StatusCode: StatusCodes.Status408RequestTimeout } timedOut)
            {
                // The body arrived slower than Kestrel's minimum data rate: not a bad body, and the client is still there.
                await Http.Problems.Create(408, "REQUEST_TIMEOUT", timedOut.Message).ExecuteAsync(httpContext);
                return true;
            }

            if (exception is BadHttpRequestException { StatusCode: StatusCodes.Status415UnsupportedMediaType } mediaType)
            {
                await Http.Problems.Create(415, "UNSUPPORTED_MEDIA_TYPE", mediaType.Message, new Dictionary<string, object?> { ["field"] = "Content-Type" }).ExecuteAsync(httpContext);
                return true;
            }

            if (exception is InvalidOperationException && exception.TargetSite?.DeclaringType == typeof(HttpRequestJsonExtensions))
            {
                // A typed body whose Content-Type the JSON reader refuses ("charset=bogus", "charset=", "charset=utf-7"):
                // thrown while binding, before the route runs. The client's mistake, not a defect.
                await Http.Problems.Create(415, "UNSUPPORTED_MEDIA_TYPE",
                    $"The body cannot be read as JSON with Content-Type '{httpContext.Request.ContentType}': send it as UTF-8 with Content-Type: application/json.",
                    new Dictionary<string, object?> { ["field"] = "Content-Type" }).ExecuteAsync(httpContext);
                return true;
            }

            if (exception is BadHttpRequestException bad)
            {
                // A typed body that does not bind: name the field when the JSON path says which ("$.monthlyBudgetCents").
                var json = bad.InnerException as JsonException;
                var field = json?.Path is { Length: > 2 } path && path.StartsWith("$.", StringComparison.Ordinal) ? path[2..] : "body";
                var detail = json is null
                    ? IsMissingBody(bad) ? "The body must be a JSON object; it was empty or null." : bad.Message
                    : field == "body" ? "The body is not valid JSON: " + json.Message
                    : json.Message.StartsWith("Duplicate property", StringComparison.Ordinal) ? $"'{field}' appears more than once (names match in any case); send each property once."
                    : $"'{field}' has the wrong type or an invalid value: {json.Message}";
                await Http.Problems.Invalid(field, detail).ExecuteAsync(httpContext);
                return true;
            }

            if (UnavailableDependency(exception) is { } dependency)
            {
                // The caller did nothing wrong and may retry; the operator gets one warning per failed request with its cause.
                LogDependencyUnavailable(logger, dependency, httpContext.Request.Path.ToString(), exception.GetType().Name, exception.Message);
                await Http.Problems.Unavailable(dependency, $"The service's {dependency} is not reachable right now; retry shortly.").ExecuteAsync(httpContext);
                return true;
            }

            logger.LogError(exception, "Unhandled error on {Path}", httpContext.Request.Path.ToString());
            await Http.Problems.Create(500, "INTERNAL_ERROR", "An unexpected error occurred; it has been logged.").ExecuteAsync(httpContext);
            return true;
        }

        /// <summary>
        /// A typed body that was empty or the JSON literal null. ASP.NET's own message names the C# parameter
        /// ("Required parameter \"AgentRequest body\" was not provided from body."), which tells the client nothing.
        /// </summary>
        static bool IsMissingBody(BadHttpRequestException bad) =>
            bad.Message.Contains("was not provided from body", StringComparison.Ordinal) || bad.Message.Contains("no body was provided", StringComparison.Ordinal);

        /// <summary>
        /// "database" or "redis" when the exception says that dependency could not be reached or refused work for now
        /// (connection refused or lost, pool exhausted, server shutting down, too many connections, disk full, busy
        /// past the timeout); null for everything else, which stays a 500: a constraint violation or a bad query is a bug.
        /// </summary>
        internal static string? UnavailableDependency(Exception exception) => exception switch
        {
            RedisConnectionException or RedisTimeoutException => "redis",
            Npgsql.PostgresException pg => pg.SqlState[..2] is "08" or "53" or "57" ? "database" : null,
            Npgsql.NpgsqlException => "database", // not from the server: connecting, the socket, the pool, a timeout
            Microsoft.Data.Sqlite.SqliteException sqlite => sqlite.SqliteErrorCode is 5 or 6 or 10 or 13 or 14 ? "database" : null,
            _ when exception.InnerException is { } inner => UnavailableDependency(inner),
            _ => null,
        };

        [LoggerMessage(EventId = 1401, EventName = "DEPENDENCY_UNAVAILABLE", Level = LogLevel.Warning,
            Message = "DEPENDENCY_UNAVAILABLE dependency={Dependency} path={Path} answered 503: {ExceptionType}: {Reason}")]
        static partial void LogDependencyUnavailable(ILogger logger, string dependency, string path, string exceptionType, string reason);
    }
}
