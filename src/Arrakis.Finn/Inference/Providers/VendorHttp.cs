using System.Net;
using System.Net.Http.Headers;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Arrakis.Finn.Inference.Providers;

/// <summary>One server-sent event as a vendor sends it.</summary>
public sealed record SseEvent(string? Event, string Data);

/// <summary>HTTP plumbing the vendor adapters share: send, classify failures, read JSON and SSE bodies.</summary>
internal static class VendorHttp
{
    public static async Task<HttpResponseMessage> SendAsync(HttpClient client, string vendor, Uri url, JsonObject body, Action<HttpRequestHeaders> headers, bool stream, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, url)
        {
            Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"),
        };
        request.Headers.Accept.ParseAdd(stream ? "text/event-stream" : "application/json");
        headers(request.Headers);
        HttpResponseMessage response;
        try
        {
            response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
        }
        catch (HttpRequestException ex)
        {
            throw new UpstreamException(UpstreamFailure.Unreachable, $"{vendor} could not be reached: {ex.Message}", null, ex);
        }

        if (!response.IsSuccessStatusCode)
        {
            using (response)
            {
                var text = await ReadTextAsync(response, ct);
                throw UpstreamException.FromStatus((int)response.StatusCode, vendor, text, RetryAfter(response));
            }
        }

        return response;
    }

    public static async Task<JsonElement> ReadJsonAsync(HttpResponseMessage response, string vendor, CancellationToken ct)
    {
        var text = await ReadTextAsync(response, ct);
        try
        {
            using var doc = JsonDocument.Parse(text);
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new UpstreamException(UpstreamFailure.Malformed, $"{vendor} answered a JSON {doc.RootElement.ValueKind}, not an object");
            }

            return doc.RootElement.Clone();
        }
        catch (JsonException ex)
        {
            throw new UpstreamException(UpstreamFailure.Malformed, $"{vendor} answered a body that is not JSON", null, ex);
        }
    }

    /// <summary>
    /// The next event of a vendor stream, or false at its end. A connection that breaks once the vendor has finished
    /// (<paramref name="finished"/>) ends the stream as if it had closed there: the answer is whole. Before that, the
    /// failure carries <paramref name="partialUsage"/>, the vendor's counts so far, as a stream that ends early is charged.
    /// </summary>
    public static async ValueTask<bool> NextEventAsync(IAsyncEnumerator<SseEvent> events, bool finished, Func<Arrakis.Shared.Contracts.Usage> partialUsage)
    {
        try
        {
            return await events.MoveNextAsync();
        }
        catch (UpstreamException) when (finished)
        {
            return false;
        }
        catch (UpstreamException ex)
        {
            throw new UpstreamException(ex.Failure, ex.Message, ex.RetryAfter, ex) { PartialUsage = partialUsage() };
        }
    }

    public static async IAsyncEnumerable<SseEvent> ReadEventsAsync(HttpResponseMessage response, [EnumeratorCancellation] CancellationToken ct)
    {
        await using var stream = await response.Content.ReadAsStreamAsync(ct);
        var reader = new SseLineReader(stream);
        // As the SSE spec reads a stream: an event is dispatched at a blank line only if it had a data line (an
        // "event: ping" alone is not an event), and its data lines are joined with newlines.
        string? name = null;
        var data = new StringBuilder();
        var hasData = false;
        while (true)
        {
            string? line;
            try
            {
                line = await reader.ReadLineAsync(ct);
            }
            catch (Exception ex) when (ex is IOException or HttpRequestException)
            {
                throw new UpstreamException(UpstreamFailure.ServerError, "the vendor's stream broke: " + ex.Message, null, ex);
            }

            if (line is null)
            {
                // Lenient at the end: a last event without its blank line (e.g. "data: [DONE]") still counts.
                if (hasData)
                {
                    yield return new SseEvent(name, data.ToString());
                }

                yield break;
            }

            if (line.Length == 0)
            {
                if (hasData)
                {
                    yield return new SseEvent(name, data.ToString());
                }

                name = null;
                data.Clear();
                hasData = false;
                continue;
            }

            if (line[0] == ':')
            {
                continue;
            }

            var colon = line.IndexOf(':', StringComparison.Ordinal);
            var field = colon < 0 ? line : line[..colon];
            var value = colon < 0 ? "" : line[(colon + 1)..];
            if (value.StartsWith(' '))
            {
                value = value[1..];
            }

            if (field == "event")
            {
                name = value;
            }
            else if (field == "data" || field == "error")
            {
                // Not an SSE field: older llama.cpp servers send a streamed failure as an "error: {...}" line (then
                // "data: [DONE]"). Skipped, as the spec skips unknown fields, the failure read as an empty answer.
                if (field == "error")
                {
                    name = "error";
                }

                if (hasData)
                {
                    data.Append('\n');
                }

                data.Append(value);
                hasData = true;
            }
        }
    }

    /// <summary>
    /// The lines of an SSE stream, each ended by CRLF, LF or a lone CR, as the spec ends them. A line is returned as soon
    /// as its end arrives: <see cref="StreamReader.ReadLineAsync(CancellationToken)"/> waits after a CR for the next
    /// character (to see whether an LF follows), so over CR-only endings each event waited for the vendor's next bytes.
    /// </summary>
    sealed class SseLineReader(Stream stream)
    {
        readonly byte[] _bytes = new byte[4096];
        readonly char[] _chars = new char[Encoding.UTF8.GetMaxCharCount(4096)];
        readonly Decoder _decoder = Encoding.UTF8.GetDecoder();
        readonly StringBuilder _line = new();
        int _pos;
        int _len;
        bool _afterCr; // an LF that comes next ends no second line
        bool _first = true;
        bool _ended;

        public async ValueTask<string?> ReadLineAsync(CancellationToken ct)
        {
            while (true)
            {
                while (_pos < _len)
                {
                    var c = _chars[_pos++];
                    if (_afterCr)
                    {
                        _afterCr = false;
                        if (c == '\n')
                        {
                            continue;
                        }
                    }

                    if (_first)
                    {
                        _first = false;
                        if (c == '\uFEFF')
                        {
                            continue; // a leading byte order mark, which the spec strips
                        }
                    }

                    if (c is '\r' or '\n')
                    {
                        _afterCr = c == '\r';
                        var line = _line.ToString();
                        _line.Clear();
                        return line;
                    }

                    _line.Append(c);
                }

                if (_ended)
                {
                    // The last line may have no end (e.g. "data: [DONE]" and the connection closes).
                    var last = _line.Length > 0 ? _line.ToString() : null;
                    _line.Clear();
                    return last;
                }

                var n = await stream.ReadAsync(_bytes, ct);
                _ended = n == 0;
                _len = _decoder.GetChars(_bytes, 0, n, _chars, 0, flush: _ended);
                _pos = 0;
            }
        }
    }

    public static JsonElement ParseEventData(SseEvent e, string vendor)
    {
        try
        {
            using var doc = JsonDocument.Parse(e.Data);
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new UpstreamException(UpstreamFailure.Malformed, $"{vendor} streamed a non-object event");
            }

            return doc.RootElement.Clone();
        }
        catch (JsonException ex)
        {
            throw new UpstreamException(UpstreamFailure.Malformed, $"{vendor} streamed an event that is not JSON", null, ex);
        }
    }

    static async Task<string> ReadTextAsync(HttpResponseMessage response, CancellationToken ct)
    {
        try
        {
            return await response.Content.ReadAsStringAsync(ct);
        }
        catch (Exception ex) when (ex is IOException or HttpRequestException)
        {
            throw new UpstreamException(UpstreamFailure.ServerError, "the vendor's body broke: " + ex.Message, null, ex);
        }
    }

    static TimeSpan? RetryAfter(HttpResponseMessage response)
    {
        if (response.Headers.RetryAfter is { } ra)
        {
            if (ra.Delta is { } d)
            {
                return d;
            }

            if (ra.Date is { } date)
            {
                var wait = date - DateTimeOffset.UtcNow;
                return wait > TimeSpan.Zero ? wait : TimeSpan.Zero;
            }
        }

        return null;
    }

    public static string? String(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    public static long? Long(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out var n) ? n : null;

    public static JsonElement? Object(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Object ? v : null;

    public static bool IsOk(HttpStatusCode code) => (int)code is >= 200 and < 300;
}
