using System.Net;
using System.Text.Json;

namespace Arrakis.Testing;

/// <summary>Checks a refusal against the problem shape every route answers bad input with.</summary>
public static class ProblemBodies
{
    /// <summary>
    /// Null when the answer is 400 with <c>error</c> <paramref name="error"/>, <c>field</c> <paramref name="field"/> and a
    /// detail that names the field; otherwise a short line saying what came back, so a loop can report every miss at once.
    /// </summary>
    public static string? Mismatch(HttpStatusCode status, string body, string field, string error = "INVALID_REQUEST")
    {
        string? code = null, named = null, detail = null;
        try
        {
            using var doc = JsonDocument.Parse(body);
            if (doc.RootElement.ValueKind == JsonValueKind.Object)
            {
                code = doc.RootElement.TryGetProperty("error", out var e) && e.ValueKind == JsonValueKind.String ? e.GetString() : null;
                named = doc.RootElement.TryGetProperty("field", out var f) && f.ValueKind == JsonValueKind.String ? f.GetString() : null;
                detail = doc.RootElement.TryGetProperty("detail", out var d) && d.ValueKind == JsonValueKind.String ? d.GetString() : null;
            }
        }
        catch (JsonException)
        {
        }

        return status == HttpStatusCode.BadRequest && code == error && named == field && detail?.Contains(field, StringComparison.Ordinal) == true
            ? null
            : $"{field}: got {(int)status} error={code ?? "-"} field={named ?? "-"}";
    }
}
