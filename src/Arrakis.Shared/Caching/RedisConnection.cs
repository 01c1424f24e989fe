using System.Net;
using Microsoft.Extensions.Logging;
using StackExchange.Redis;

namespace Arrakis.Shared.Caching;

/// <summary>
/// Connects a service to Redis at start-up. An unreachable Redis does not stop the service: the multiplexer keeps
/// retrying in the background, and what needs Redis fails with a clear error until it answers. Start-up waits for the
/// first attempt at most <see cref="DefaultConnectTimeoutMs"/> (or the configuration's <c>connectTimeout</c>), then
/// says so in the log, instead of going quiet for the length of a long connect timeout.
/// </summary>
public static partial class RedisConnection
{
    public const int DefaultConnectTimeoutMs = 3000;

    public static IConnectionMultiplexer Connect(string configuration, ILogger logger)
    {
        var options = ConfigurationOptions.Parse(configuration);
        options.AbortOnConnectFail = false;
        if (!configuration.Contains("connectTimeout=", StringComparison.OrdinalIgnoreCase))
        {
            options.ConnectTimeout = DefaultConnectTimeoutMs;
        }

        var endpoints = string.Join(",", options.EndPoints.Select(Describe)); // never the configuration: it may hold a password
        var multiplexer = ConnectionMultiplexer.Connect(options);
        var down = multiplexer.IsConnected ? 0 : 1;
        if (down == 1)
        {
            LogUnreachable(logger, endpoints, options.ConnectTimeout);
        }

        // Once per outage, not once per reconnect attempt or per connection (interactive and subscription fail together).
        multiplexer.ConnectionFailed += (_, e) =>
        {
            if (Interlocked.Exchange(ref down, 1) == 0)
            {
                LogLost(logger, endpoints, e.FailureType.ToString());
            }
        };
        multiplexer.ConnectionRestored += (_, _) =>
        {
            if (multiplexer.IsConnected && Interlocked.Exchange(ref down, 0) == 1)
            {
                LogRestored(logger, endpoints);
            }
        };
        return multiplexer;
    }

    static string Describe(EndPoint endpoint) => endpoint switch
    {
        DnsEndPoint dns => $"{dns.Host}:{dns.Port}",
        _ => endpoint.ToString() ?? "",
    };

    [LoggerMessage(EventId = 1301, EventName = "REDIS_UNREACHABLE", Level = LogLevel.Warning,
        Message = "REDIS_UNREACHABLE endpoints={Endpoints}: no answer within {TimeoutMs} ms at start-up. The service runs and keeps retrying; the JWT replay cache, rate limits and cache invalidation fail until Redis answers (health: redis_unreachable)")]
    static partial void LogUnreachable(ILogger logger, string endpoints, int timeoutMs);

    [LoggerMessage(EventId = 1302, EventName = "REDIS_CONNECTION_LOST", Level = LogLevel.Warning,
        Message = "REDIS_CONNECTION_LOST endpoints={Endpoints} failure={Failure}; retrying in the background")]
    static partial void LogLost(ILogger logger, string endpoints, string failure);

    [LoggerMessage(EventId = 1303, EventName = "REDIS_CONNECTION_RESTORED", Level = LogLevel.Information,
        Message = "REDIS_CONNECTION_RESTORED endpoints={Endpoints}")]
    static partial void LogRestored(ILogger logger, string endpoints);
}
