using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Arrakis.Freeside;
using Arrakis.Shared.Hosting;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Shared.Tests.Hosting;

/// <summary>
/// A request line or headers over Kestrel's limits were refused by Kestrel itself, before any middleware: 414 or 431
/// with an empty body. Now every service answers them as a problem with an error code, at the same thresholds.
/// </summary>
public sealed class RequestLimitsTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Every_service_answers_an_oversized_request_line_or_headers_as_json_at_kestrels_thresholds()
    {
        await using var platform = await Platform.StartAsync();
        var wrong = new List<string>();
        foreach (var (service, url) in new[] { ("freeside", platform.FreesideUrl), ("finn", platform.FinnUrl), ("dixie", platform.DixieUrl) })
        {
            var uri = new Uri(url);
            var fixedHeaders = $"Host: {uri.Authority}\r\nConnection: close\r\n";

            // Header lines ("Name: value" and CRLF) of exactly Kestrel's default 32 KiB total pass; one byte more is 431.
            string Padded(int total) => fixedHeaders + "X-Pad: " + new string('a', total - fixedHeaders.Length - "X-Pad: \r\n".Length) + "\r\n";
            Expect(wrong, service, "headers of 32768 bytes", await SendAsync(uri, $"GET /health/live HTTP/1.1\r\n{Padded(32 * 1024)}\r\n"), 200);
            Expect(wrong, service, "headers of 32769 bytes", await SendAsync(uri, $"GET /health/live HTTP/1.1\r\n{Padded(32 * 1024 + 1)}\r\n"),
                431, "REQUEST_HEADERS_TOO_LARGE", 32 * 1024);

            // 100 header fields (Kestrel's default) pass; 101 are 431.
            string Many(int count) => fixedHeaders + string.Concat(Enumerable.Range(0, count - 2).Select(i => $"X-H{i}: {i}\r\n"));
            Expect(wrong, service, "100 headers", await SendAsync(uri, $"GET /health/live HTTP/1.1\r\n{Many(100)}\r\n"), 200);
            Expect(wrong, service, "101 headers", await SendAsync(uri, $"GET /health/live HTTP/1.1\r\n{Many(101)}\r\n"), 431, "REQUEST_HEADERS_TOO_LARGE", 100);

            // A request line ("GET target HTTP/1.1" and CRLF) of exactly 8 KiB passes; one byte more is 414.
            string Line(int length) => "GET /health/live?q=" + new string('b', length - "GET /health/live?q= HTTP/1.1\r\n".Length) + " HTTP/1.1\r\n";
            Expect(wrong, service, "a request line of 8192 bytes", await SendAsync(uri, $"{Line(8 * 1024)}{fixedHeaders}\r\n"), 200);
            Expect(wrong, service, "a request line of 8193 bytes", await SendAsync(uri, $"{Line(8 * 1024 + 1)}{fixedHeaders}\r\n"), 414, "URI_TOO_LONG", 8 * 1024);
        }

        Assert.True(wrong.Count == 0, string.Join("\n", wrong));
    }

    /// <summary>
    /// <c>Kestrel__Limits__*</c> was never read (Kestrel does not bind its Limits section by itself): a smaller body limit
    /// left Kestrel's 30 MB default in force. The configured limits apply, answered as problems; far past them Kestrel's
    /// own backstop still refuses.
    /// </summary>
    [Fact]
    public async Task Configured_limits_apply_and_are_answered_as_json_on_freeside_and_finn()
    {
        await using var platform = await Platform.StartAsync(settings: new Dictionary<string, string?>
        {
            ["Kestrel:Limits:MaxRequestBodySize"] = "4096",
            ["Kestrel:Limits:MaxRequestHeadersTotalSize"] = "4096",
            ["Kestrel:Limits:MaxRequestLineSize"] = "1024",
            ["Kestrel:Limits:MaxRequestHeaderCount"] = "20",
        });
        var issuer = platform.Freeside.Services.GetRequiredService<TokenIssuer>();
        var operatorToken = issuer.Mint(FreesideService.Issuer, "arrakis-admin", new Dictionary<string, object> { ["role"] = "operator" }, TimeSpan.FromMinutes(5));
        var finnToken = issuer.Mint(FreesideService.Issuer, "loa-finn", new Dictionary<string, object> { ["sub"] = "admin" });
        var routes = new (string Service, string Url, string Method, string Path, string Token)[]
        {
            ("freeside", platform.FreesideUrl, "PUT", "/api/v1/admin/communities/c1", operatorToken),
            ("finn", platform.FinnUrl, "POST", "/api/v1/routing/mode", finnToken),
        };
        var wrong = new List<string>();
        foreach (var (service, url, method, path, token) in routes)
        {
            var uri = new Uri(url);
            var head = $"Host: {uri.Authority}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n";
            var body = "{\"name\":\"" + new string('n', 5000) + "\"}";
            Expect(wrong, service, "a body of 5012 bytes", await SendAsync(uri,
                $"{method} {path} HTTP/1.1\r\n{head}Content-Type: application/json\r\nContent-Length: {body.Length}\r\n\r\n{body}"), 413, "REQUEST_TOO_LARGE", null, "4096 bytes");

            Expect(wrong, service, "headers over 4096 bytes", await SendAsync(uri, $"GET /health/live HTTP/1.1\r\n{head}X-Pad: {new string('a', 4096)}\r\n\r\n"),
                431, "REQUEST_HEADERS_TOO_LARGE", 4096);
            Expect(wrong, service, "21 headers", await SendAsync(uri,
                $"GET /health/live HTTP/1.1\r\n{head}{string.Concat(Enumerable.Range(0, 18).Select(i => $"X-H{i}: {i}\r\n"))}\r\n"), 431, "REQUEST_HEADERS_TOO_LARGE", 20);
            Expect(wrong, service, "a request line over 1024 bytes", await SendAsync(uri, $"GET /health/live?q={new string('b', 1024)} HTTP/1.1\r\n{head}\r\n"),
                414, "URI_TOO_LONG", 1024);

            // Kestrel's own limit, twice the configured one, stays as a backstop (its answer has no body).
            var (status, _) = await SendAsync(uri, $"GET /health/live HTTP/1.1\r\n{head}X-Pad: {new string('a', 3 * 4096)}\r\n\r\n");
            if (status != 431)
            {
                wrong.Add($"{service} headers three times the limit: {status}");
            }
        }

        Assert.True(wrong.Count == 0, string.Join("\n", wrong));
    }

    /// <summary>A limit Kestrel cannot take stops the start naming the section (it was ignored: the service ran with the default).</summary>
    [Fact]
    public async Task An_out_of_range_limit_fails_the_start_naming_the_section()
    {
        var settings = TestStorage.FreshConfig("sqlite", "finn");
        settings["urls"] = $"http://127.0.0.1:{TestStorage.FreePort()}";
        settings["Kestrel:Limits:MaxRequestHeadersTotalSize"] = "0";
        var args = settings.SelectMany(kv => new[] { "--" + kv.Key, kv.Value! }).ToArray();
        var refused = await Record.ExceptionAsync(async () => await (await ServiceMain.StartAsync("finn", () => Arrakis.Finn.FinnService.CreateAsync(args), Ct)).DisposeAsync());
        var failed = Assert.IsType<ServiceStartException>(refused);
        Assert.Equal("finn did not start: A setting under Kestrel:Limits is out of range: Value must be a positive number. (Parameter 'value')",
            ServiceMain.Chain(failed));
    }

    /// <summary>
    /// An empty body limit (an unset variable in a template) binds as null, Kestrel's "no limit": it keeps the 8 MiB
    /// default. Kestrel's own head limits are the backstops, twice the enforced ones.
    /// </summary>
    [Fact]
    public async Task An_empty_body_limit_keeps_the_default_and_kestrel_gets_the_backstops()
    {
        var builder = Microsoft.AspNetCore.Builder.WebApplication.CreateBuilder(["--Kestrel:Limits:MaxRequestBodySize", "", "--Kestrel:Limits:MaxRequestLineSize", "4000"]);
        var limits = RequestLimits.Apply(builder, ServiceDefaults.MaxRequestBodyBytes);
        Assert.Equal(new RequestLimits(8 << 20, 4000, 32 * 1024, 100), limits);
        await using var app = builder.Build();
        var kestrel = app.Services.GetRequiredService<Microsoft.Extensions.Options.IOptions<Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions>>().Value.Limits;
        Assert.Equal((8L << 20, 8000, 64 * 1024, 200), (kestrel.MaxRequestBodySize, kestrel.MaxRequestLineSize, kestrel.MaxRequestHeadersTotalSize, kestrel.MaxRequestHeaderCount));
    }

    static void Expect(List<string> wrong, string service, string what, (int Status, string Body) answer, int status,
        string? error = null, long? limit = null, string? detailContains = null)
    {
        var (code, detail, named, problemStatus) = ((string?)null, (string?)null, (long?)null, (int?)null);
        try
        {
            using var doc = JsonDocument.Parse(answer.Body);
            var root = doc.RootElement;
            code = root.TryGetProperty("error", out var e) && e.ValueKind == JsonValueKind.String ? e.GetString() : null;
            detail = root.TryGetProperty("detail", out var d) && d.ValueKind == JsonValueKind.String ? d.GetString() : null;
            named = root.TryGetProperty("limit", out var l) && l.ValueKind == JsonValueKind.Number ? l.GetInt64() : null;
            problemStatus = root.TryGetProperty("status", out var s) && s.ValueKind == JsonValueKind.Number ? s.GetInt32() : null;
        }
        catch (JsonException)
        {
        }

        var ok = answer.Status == status && (error is null
            ? status == 200
            : code == error && problemStatus == status && !string.IsNullOrEmpty(detail)
              && (limit is null || (named == limit && detail!.Contains(limit.Value.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal)))
              && (detailContains is null || detail!.Contains(detailContains, StringComparison.Ordinal)));
        if (!ok)
        {
            wrong.Add($"{service} {what}: expected {status} {error}, got {answer.Status} body '{(answer.Body.Length > 300 ? answer.Body[..300] : answer.Body)}'");
        }
    }

    /// <summary>Sends the request exactly as written (HttpClient would add and reformat headers); reads the status and the de-chunked body.</summary>
    static async Task<(int Status, string Body)> SendAsync(Uri uri, string request)
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(uri.Host, uri.Port, Ct);
        await using var stream = tcp.GetStream();
        await stream.WriteAsync(Encoding.ASCII.GetBytes(request), Ct);
        using var buffer = new MemoryStream();
        try
        {
            await stream.CopyToAsync(buffer, Ct);
        }
        catch (IOException) when (buffer.Length > 0)
        {
            // Kestrel resets a connection it refused while request bytes are still unread; the answer was already read.
        }

        var text = Encoding.UTF8.GetString(buffer.ToArray());
        var split = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
        Assert.True(split > 0, $"no response head: '{text}'");
        var headLines = text[..split].Split("\r\n");
        var status = int.Parse(headLines[0].Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture);
        var body = text[(split + 4)..];
        if (headLines.Any(h => h.Equals("Transfer-Encoding: chunked", StringComparison.OrdinalIgnoreCase)))
        {
            var decoded = new StringBuilder();
            var at = 0;
            while (true)
            {
                var end = body.IndexOf("\r\n", at, StringComparison.Ordinal);
                var size = Convert.ToInt32(body[at..end], 16);
                if (size == 0)
                {
                    break;
                }

                decoded.Append(body, end + 2, size);
                at = end + 2 + size + 2;
            }

            body = decoded.ToString();
        }

        return (status, body);
    }
}
