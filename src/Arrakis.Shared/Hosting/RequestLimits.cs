using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Shared.Hosting;

/// <summary>
/// The request size limits of a service, from <c>Kestrel:Limits</c>. Kestrel does not read that section by itself
/// (<c>Kestrel__Limits__MaxRequestBodySize</c> was ignored: a body up to Kestrel's 30 MB default was read), and it
/// refuses a request line over <c>MaxRequestLineSize</c> (414) or headers over <c>MaxRequestHeadersTotalSize</c> /
/// <c>MaxRequestHeaderCount</c> (431) while parsing, before any middleware, with an empty body. So Kestrel's own head
/// limits are set to <see cref="BackstopFactor"/> times the configured ones (16 KiB and 64 KiB by default, the public
/// load balancer's own limits), and <see cref="RefuseOversizedHeadAsync"/> answers from the configured ones with a
/// JSON problem, measured as Kestrel measures them.
/// </summary>
public sealed record RequestLimits(long MaxRequestBodySize, int MaxRequestLineSize, int MaxRequestHeadersTotalSize, int MaxRequestHeaderCount)
{
    public const string Section = "Kestrel:Limits";

    /// <summary>Kestrel's own head limits are this many times the configured ones (at most its request buffer).</summary>
    public const int BackstopFactor = 2;

    /// <summary>Reads <c>Kestrel:Limits</c> (body: <paramref name="defaultMaxRequestBodySize"/> unless set) and applies it to Kestrel.</summary>
    public static RequestLimits Apply(WebApplicationBuilder builder, long defaultMaxRequestBodySize)
    {
        var section = builder.Configuration.GetSection(Section);
        var configured = new KestrelServerLimits { MaxRequestBodySize = defaultMaxRequestBodySize };
        try
        {
            section.Bind(configured);
        }
        catch (System.Reflection.TargetInvocationException ex) when (ex.InnerException is ArgumentException invalid)
        {
            throw new InvalidOperationException($"A setting under {Section} is out of range: {invalid.Message}", invalid);
        }

        // An empty MaxRequestBodySize binds as null, which Kestrel reads as "no limit": a body of any size buffered.
        var limits = new RequestLimits(configured.MaxRequestBodySize ?? defaultMaxRequestBodySize, configured.MaxRequestLineSize, configured.MaxRequestHeadersTotalSize, configured.MaxRequestHeaderCount);
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            section.Bind(kestrel.Limits); // the rest of the section too (KeepAliveTimeout, MaxConcurrentConnections, ...)
            var k = kestrel.Limits;
            k.MaxRequestBodySize = limits.MaxRequestBodySize;
            var buffer = k.MaxRequestBufferSize ?? int.MaxValue; // Kestrel refuses to start with a head limit over it
            k.MaxRequestLineSize = Backstop(limits.MaxRequestLineSize, buffer);
            k.MaxRequestHeadersTotalSize = Backstop(limits.MaxRequestHeadersTotalSize, buffer);
            k.MaxRequestHeaderCount = Backstop(limits.MaxRequestHeaderCount, int.MaxValue);
        });
        builder.Services.AddSingleton(limits);
        return limits;
    }

    static int Backstop(int configured, long ceiling) => (int)Math.Max(configured, Math.Min((long)configured * BackstopFactor, Math.Min(ceiling, int.MaxValue)));

    /// <summary>
    /// 414 <c>URI_TOO_LONG</c> for an HTTP/1.x request line over the configured limit (<c>GET /path?query HTTP/1.1</c>
    /// and its CRLF), 431 <c>REQUEST_HEADERS_TOO_LARGE</c> for more header fields than allowed or header lines
    /// (<c>Name: value</c> and CRLF each) over the configured total.
    /// </summary>
    internal static Task RefuseOversizedHeadAsync(HttpContext context, RequestDelegate next)
    {
        var limits = context.RequestServices.GetRequiredService<RequestLimits>();
        var request = context.Request;
        if (HttpProtocol.IsHttp11(request.Protocol) || HttpProtocol.IsHttp10(request.Protocol))
        {
            var target = context.Features.Get<IHttpRequestFeature>()?.RawTarget ?? request.PathBase + request.Path + request.QueryString;
            var line = request.Method.Length + 1 + target.Length + 1 + request.Protocol.Length + 2;
            if (line > limits.MaxRequestLineSize)
            {
                return RefuseAsync(context, 414, "URI_TOO_LONG",
                    $"The request line (method, URL and protocol) is {line} bytes; the limit is {limits.MaxRequestLineSize} bytes.", limits.MaxRequestLineSize);
            }
        }

        var count = 0;
        long size = 0;
        foreach (var (name, values) in request.Headers)
        {
            foreach (var value in values)
            {
                count++;
                size += name.Length + 2 + Encoding.UTF8.GetByteCount(value ?? "") + 2;
            }
        }

        if (count > limits.MaxRequestHeaderCount)
        {
            return RefuseAsync(context, 431, "REQUEST_HEADERS_TOO_LARGE",
                $"The request has {count} header fields; the limit is {limits.MaxRequestHeaderCount}.", limits.MaxRequestHeaderCount);
        }

        if (size > limits.MaxRequestHeadersTotalSize)
        {
            return RefuseAsync(context, 431, "REQUEST_HEADERS_TOO_LARGE",
                $"The request headers are {size} bytes; the limit is {limits.MaxRequestHeadersTotalSize} bytes.", limits.MaxRequestHeadersTotalSize);
        }

        return next(context);
    }

    static Task RefuseAsync(HttpContext context, int status, string error, string detail, long limit) =>
        Http.Problems.Create(status, error, detail, new Dictionary<string, object?> { ["limit"] = limit }).ExecuteAsync(context);
}
