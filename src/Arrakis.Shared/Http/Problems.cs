using Microsoft.AspNetCore.Http;

namespace Arrakis.Shared.Http;

/// <summary>
/// RFC 9457 problem details with a stable machine-readable <c>error</c> code beside the human <c>detail</c>.
/// </summary>
public static class Problems
{
    public static IResult Create(int status, string error, string detail, IDictionary<string, object?>? extensions = null, IDictionary<string, string>? headers = null)
    {
        var ext = new Dictionary<string, object?> { ["error"] = error };
        if (extensions is not null)
        {
            foreach (var (k, v) in extensions)
            {
                ext[k] = v;
            }
        }

        var problem = TypedResults.Problem(
            detail: detail,
            statusCode: status,
            title: Title(error),
            type: "https://arrakis.dev/errors/" + error.ToLowerInvariant().Replace('_', '-'),
            extensions: ext);
        return headers is null ? problem : new WithHeaders(problem, headers);
    }

    public static IResult Unauthorized(string detail) => Create(401, "UNAUTHORIZED", detail);

    public static IResult Forbidden(string detail) => Create(403, "FORBIDDEN", detail);

    public static IResult NotFound(string what, string id) => Create(404, "NOT_FOUND", $"{what} '{id}' was not found.");

    /// <summary>
    /// 503 SERVICE_UNAVAILABLE naming the unreachable <paramref name="dependency"/>, with Retry-After: the caller did
    /// nothing wrong and may retry shortly.
    /// </summary>
    public static IResult Unavailable(string dependency, string detail) =>
        Create(503, "SERVICE_UNAVAILABLE", detail, new Dictionary<string, object?> { ["dependency"] = dependency }, RetryLater);

    static readonly Dictionary<string, string> RetryLater = new() { ["Retry-After"] = "5" };

    public static IResult Invalid(string field, string detail) =>
        Create(400, "INVALID_REQUEST", detail, new Dictionary<string, object?> { ["field"] = field });

    static string Title(string error) =>
        string.Join(' ', error.Split('_').Select(w => w.Length == 0 ? w : w[0] + w[1..].ToLowerInvariant()));

    sealed class WithHeaders(IResult inner, IDictionary<string, string> headers) : IResult
    {
        public Task ExecuteAsync(HttpContext httpContext)
        {
            foreach (var (k, v) in headers)
            {
                httpContext.Response.Headers[k] = v;
            }

            return inner.ExecuteAsync(httpContext);
        }
    }
}
