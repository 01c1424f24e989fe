using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text;

namespace Arrakis.Cli.Gate;

/// <summary>
/// One HTTP exchange as the gate saw it. <see cref="Status"/> is 0 when nothing came back (curl's <c>000</c>):
/// connection refused, DNS failure or timeout before the headers.
/// </summary>
internal sealed record HttpOutcome(int Status, string Body, IReadOnlyList<string> HeaderLines, string? ContentType, string? Error, bool TimedOut, long ElapsedMs)
{
    /// <summary><c>curl -sf</c> success: a response below 400 that finished within the time limit.</summary>
    public bool Succeeded => Status is >= 200 and < 400 && !TimedOut;

    public string Describe() => Status == 0 ? Error ?? "no response" : TimedOut ? $"HTTP {Status}, timed out reading the body" : $"HTTP {Status}";
}

/// <summary>The gate's HTTP client: one shared connection pool, a per-request time limit like <c>curl --max-time</c>.</summary>
internal sealed class GateHttp(HttpClient client)
{
    public const string JsonType = "application/json";

    public static HttpClient CreateClient() => new(new SocketsHttpHandler
    {
        PooledConnectionLifetime = TimeSpan.FromMinutes(2),
        ConnectTimeout = TimeSpan.FromSeconds(10),
        MaxConnectionsPerServer = 64,

        // curl without -L: a 3xx is the answer the gate judges, never where it points.
        AllowAutoRedirect = false,
    })
    {
        Timeout = Timeout.InfiniteTimeSpan,
    };

    public Task<HttpOutcome> GetAsync(string url, TimeSpan timeout, string? bearer, CancellationToken ct) =>
        SendAsync(HttpMethod.Get, url, null, bearer, timeout, null, null, false, ct);

    public Task<HttpOutcome> PostJsonAsync(string url, string body, string? bearer, TimeSpan timeout, CancellationToken ct, IReadOnlyDictionary<string, string>? headers = null) =>
        SendAsync(HttpMethod.Post, url, body, bearer, timeout, null, headers, false, ct);

    /// <param name="keepPartial">Keep the body read so far when the time limit strikes (curl --no-buffer for SSE).</param>
    public async Task<HttpOutcome> SendAsync(HttpMethod method, string url, string? jsonBody, string? bearer, TimeSpan timeout, string? accept,
        IReadOnlyDictionary<string, string>? headers, bool keepPartial, CancellationToken ct)
    {
        var watch = Stopwatch.StartNew();
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(timeout);
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
        {
            // curl's "bad URL" is a failed request like any other, not an abort.
            return new HttpOutcome(0, "", [], null, "unusable URL: " + url, false, watch.ElapsedMilliseconds);
        }

        using var request = new HttpRequestMessage(method, uri);
        if (jsonBody is not null)
        {
            request.Content = new ByteArrayContent(Encoding.UTF8.GetBytes(jsonBody));
            request.Content.Headers.ContentType = new MediaTypeHeaderValue(JsonType);
        }

        if (bearer is not null)
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", bearer);
        }

        if (accept is not null)
        {
            request.Headers.Accept.ParseAdd(accept);
        }

        foreach (var (name, value) in headers ?? new Dictionary<string, string>())
        {
            request.Headers.TryAddWithoutValidation(name, value);
        }

        HttpResponseMessage response;
        try
        {
            response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, limit.Token);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            return new HttpOutcome(0, "", [], null, $"timeout after {timeout.TotalSeconds:0.#} s", true, watch.ElapsedMilliseconds);
        }
        catch (HttpRequestException ex)
        {
            return new HttpOutcome(0, "", [], null, "unreachable: " + (ex.InnerException?.Message ?? ex.Message), false, watch.ElapsedMilliseconds);
        }

        using (response)
        {
            var lines = new List<string> { $"HTTP/{response.Version} {(int)response.StatusCode} {response.ReasonPhrase}" };
            lines.AddRange(response.Headers.Select(h => $"{h.Key}: {string.Join(", ", h.Value)}"));
            lines.AddRange(response.Content.Headers.Select(h => $"{h.Key}: {string.Join(", ", h.Value)}"));
            var contentType = response.Content.Headers.ContentType?.MediaType;
            var body = new StringBuilder();
            var timedOut = false;
            try
            {
                await using var stream = await response.Content.ReadAsStreamAsync(limit.Token);
                using var reader = new StreamReader(stream, Encoding.UTF8);
                var buffer = new char[4096];
                int read;
                while ((read = await reader.ReadAsync(buffer.AsMemory(), limit.Token)) > 0)
                {
                    body.Append(buffer, 0, read);
                }
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                timedOut = true;
            }
            catch (Exception ex) when (ex is HttpRequestException or IOException)
            {
                return new HttpOutcome((int)response.StatusCode, keepPartial ? body.ToString() : "", lines, contentType, "connection dropped: " + ex.Message, true, watch.ElapsedMilliseconds);
            }

            return new HttpOutcome((int)response.StatusCode, timedOut && !keepPartial ? "" : body.ToString(), lines, contentType,
                timedOut ? $"timeout after {timeout.TotalSeconds:0.#} s" : null, timedOut, watch.ElapsedMilliseconds);
        }
    }
}
