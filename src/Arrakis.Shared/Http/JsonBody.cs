using Microsoft.AspNetCore.Http;

namespace Arrakis.Shared.Http;

/// <summary>
/// Writes a JSON body whose bytes are already made, with <c>Content-Length</c>. The caller then has the whole answer as
/// soon as its last byte is written. A body of unknown length goes out chunked, and its final chunk waits until the
/// request pipeline has unwound, so whatever runs after the write (the log line, metrics) would delay the caller.
/// </summary>
public static class JsonBody
{
    public static Task WriteAsync(HttpResponse response, int status, ReadOnlyMemory<byte> body, string contentType = "application/json")
    {
        response.StatusCode = status;
        response.ContentType = contentType;
        response.ContentLength = body.Length;
        return response.Body.WriteAsync(body).AsTask();
    }
}
