using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Arrakis.Shared.Http;
using Microsoft.AspNetCore.Http;

namespace Arrakis.Freeside.Idempotency;

/// <summary>Where the key came from; a generated key is echoed back to the client.</summary>
public enum IdempotencyKeySource
{
    Header,
    BodyCamel,
    BodySnake,
    Generated,
}

public sealed record IdempotencyKey(string Value, IdempotencyKeySource Source);

/// <summary>Resolves the idempotency key of a request from the header or the body (<c>idempotencyKey</c> or <c>idempotency_key</c>).</summary>
public static class IdempotencyKeys
{
    public const string Header = "X-Idempotency-Key";
    public const int MaxLength = 255;

    /// <summary>
    /// Returns the key, or a 400 problem when a supplied key is empty, longer than 255 characters, not a string, or given
    /// in more than one place (header, <c>idempotencyKey</c>, <c>idempotency_key</c>, or the header twice) with different
    /// values: which one the client meant cannot be known, and picking one could charge a retry again.
    /// </summary>
    public static (IdempotencyKey? Key, IResult? Problem) Resolve(HttpRequest request, JsonElement? body)
    {
        IdempotencyKey? found = null;
        if (request.Headers.TryGetValue(Header, out var header) && header.Count > 0)
        {
            foreach (var value in header)
            {
                var (key, problem) = Agree(found, value ?? "", IdempotencyKeySource.Header);
                if (problem is not null)
                {
                    return (null, problem);
                }

                found = key;
            }
        }

        if (body is { ValueKind: JsonValueKind.Object } b)
        {
            foreach (var (name, source) in new[] { ("idempotencyKey", IdempotencyKeySource.BodyCamel), ("idempotency_key", IdempotencyKeySource.BodySnake) })
            {
                if (b.TryGetProperty(name, out var value) && value.ValueKind != JsonValueKind.Null)
                {
                    if (value.ValueKind != JsonValueKind.String)
                    {
                        return (null, Problems.Invalid(name, name + " must be a string."));
                    }

                    var (key, problem) = Agree(found, value.GetString()!, source);
                    if (problem is not null)
                    {
                        return (null, problem);
                    }

                    found = key;
                }
            }
        }

        return (found ?? new IdempotencyKey("gen-" + Guid.NewGuid().ToString("N"), IdempotencyKeySource.Generated), null);
    }

    static (IdempotencyKey?, IResult?) Agree(IdempotencyKey? found, string value, IdempotencyKeySource source)
    {
        var (key, problem) = Check(value, source);
        if (problem is not null || found is null)
        {
            return (key, problem);
        }

        return found.Value == key!.Value
            ? (found, null)
            : (null, Problems.Create(400, "INVALID_IDEMPOTENCY_KEY",
                $"The idempotency key is given twice with different values ({FieldOf(found.Source)} and {FieldOf(source)}); send one key.",
                new Dictionary<string, object?> { ["field"] = FieldOf(source) }));
    }

    static string FieldOf(IdempotencyKeySource source) => source switch
    {
        IdempotencyKeySource.Header => Header,
        IdempotencyKeySource.BodyCamel => "idempotencyKey",
        _ => "idempotency_key",
    };

    /// <summary>A stable hash of the method, path and raw body bytes: the same request hashes the same.</summary>
    public static string Hash(string method, string path, ReadOnlySpan<byte> body)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(Encoding.UTF8.GetBytes(method + " " + path + "\n"));
        sha.AppendData(body);
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    /// <summary>
    /// A key is 1–255 printable ASCII characters (space to '~'), what a header can carry: the invoke route echoes it in the
    /// <c>Idempotency-Key</c> response header, and a body key with "é" or a control character failed there after the call
    /// had been charged.
    /// </summary>
    static (IdempotencyKey?, IResult?) Check(string value, IdempotencyKeySource source)
    {
        if (value.Length == 0 || value.Length > MaxLength)
        {
            return (null, Problems.Create(400, "INVALID_IDEMPOTENCY_KEY", $"The idempotency key ({FieldOf(source)}) must be 1-{MaxLength} characters (got {value.Length}).",
                new Dictionary<string, object?> { ["field"] = FieldOf(source) }));
        }

        if (value.AsSpan().ContainsAnyExceptInRange(' ', '~'))
        {
            return (null, Problems.Create(400, "INVALID_IDEMPOTENCY_KEY", $"The idempotency key ({FieldOf(source)}) must be printable ASCII (space to '~'), as a header can carry it.",
                new Dictionary<string, object?> { ["field"] = FieldOf(source) }));
        }

        return (new IdempotencyKey(value, source), null);
    }

    /// <summary>The 409 answers of a key that cannot start (DESIGN §3).</summary>
    public static IResult? Conflict(IdempotencyBegin begin) => begin.State switch
    {
        IdempotencyState.KeyReused => Problems.Create(409, "IDEMPOTENCY_KEY_REUSED", "This idempotency key was used with a different request body."),
        IdempotencyState.InProgress => Problems.Create(409, "REQUEST_IN_PROGRESS", "A request with this idempotency key is still in progress; retry later."),
        _ => null,
    };

    /// <summary>Replays a stored response byte for byte.</summary>
    public static IResult Replay(IdempotencyBegin begin) =>
        Results.Text(begin.Body ?? "", begin.ContentType ?? "application/json", Encoding.UTF8, begin.Status ?? 200);
}
