using System.Text.Json;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Http;

namespace Arrakis.Freeside.Invoke;

/// <summary>A validated <c>POST /api/agents/invoke</c> body.</summary>
public sealed record InvokeRequest(
    IReadOnlyList<ChatMessage> Messages,
    string? Pool,
    string? Agent,
    bool Stream,
    int? MaxTokens);

/// <summary>Why a body was refused: the field and a message that says how to fix it.</summary>
public sealed record InvokeRequestError(string Field, string Detail);

public static class InvokeRequestParser
{
    public const int MaxPromptChars = 200_000;

    /// <summary>The most the messages may take as JSON in finn's body (its <see cref="FinnContract.MaxBodyBytes"/> less the other fields).</summary>
    public const int MaxMessagesJsonBytes = FinnContract.MaxBodyBytes - FinnContract.MaxBodyOverheadBytes;

    static readonly string[] Roles = ["system", "user", "assistant"];

    public static (InvokeRequest? Request, InvokeRequestError? Error) Parse(ReadOnlySpan<byte> body)
    {
        JsonElement root;
        try
        {
            using var doc = JsonDocument.Parse(body.ToArray());
            root = doc.RootElement.Clone();
        }
        catch (JsonException ex)
        {
            return (null, new InvokeRequestError("body", "The body must be a JSON object: " + ex.Message));
        }

        if (root.ValueKind != JsonValueKind.Object)
        {
            return (null, new InvokeRequestError("body", "The body must be a JSON object such as {\"prompt\":\"Hi\",\"model\":\"cheap\"}."));
        }

        if (JsonText.Check(root) is { } text)
        {
            return (null, new InvokeRequestError(text.Field, text.Detail));
        }

        var messages = new List<ChatMessage>();
        if (root.TryGetProperty("messages", out var list) && list.ValueKind != JsonValueKind.Null)
        {
            if (list.ValueKind != JsonValueKind.Array || list.GetArrayLength() == 0)
            {
                return (null, new InvokeRequestError("messages", "messages must be a non-empty array of {role, content}."));
            }

            var i = 0;
            foreach (var m in list.EnumerateArray())
            {
                if (m.ValueKind != JsonValueKind.Object
                    || !m.TryGetProperty("role", out var role) || role.ValueKind != JsonValueKind.String || !Roles.Contains(role.GetString())
                    || !m.TryGetProperty("content", out var content) || content.ValueKind != JsonValueKind.String)
                {
                    return (null, new InvokeRequestError($"messages[{i}]", "Each message needs role (system|user|assistant) and string content."));
                }

                messages.Add(new ChatMessage(role.GetString()!, content.GetString()!));
                i++;
            }
        }

        if (root.TryGetProperty("prompt", out var prompt) && prompt.ValueKind != JsonValueKind.Null)
        {
            if (prompt.ValueKind != JsonValueKind.String || string.IsNullOrWhiteSpace(prompt.GetString()))
            {
                return (null, new InvokeRequestError("prompt", "prompt must be a non-empty string."));
            }

            messages.Add(new ChatMessage("user", prompt.GetString()!));
        }

        if (messages.Count == 0)
        {
            return (null, new InvokeRequestError("prompt", "Send a prompt (string) or messages (array of {role, content})."));
        }

        if (messages.Sum(m => (long)m.Content.Length) > MaxPromptChars)
        {
            return (null, new InvokeRequestError("prompt", $"The prompt is longer than {MaxPromptChars} characters."));
        }

        // Measured as finn is sent them: a body finn would refuse (413) is refused here, before anything is reserved or quoted.
        if (JsonSerializer.SerializeToUtf8Bytes(messages, FinnClient.Json).Length > MaxMessagesJsonBytes)
        {
            return (null, new InvokeRequestError(list.ValueKind == JsonValueKind.Array ? "messages" : "prompt",
                $"The messages come to more than {MaxMessagesJsonBytes} bytes as JSON, more than the inference service reads; send fewer or shorter messages."));
        }

        if (!OptionalString(root, "model", 64, out var pool, out var error)
            || !OptionalString(root, "agent", RoutingKey.MaxLength, out var agent, out error))
        {
            return (null, error);
        }

        if (agent is not null && !RoutingKey.IsValid(agent))
        {
            return (null, new InvokeRequestError("agent", "agent must be a routing key: " + RoutingKey.Shape + "."));
        }

        agent = agent is null ? null : RoutingKey.Canonical(agent);

        var stream = false;
        if (root.TryGetProperty("stream", out var s) && s.ValueKind != JsonValueKind.Null)
        {
            if (s.ValueKind is not (JsonValueKind.True or JsonValueKind.False))
            {
                return (null, new InvokeRequestError("stream", "stream must be true or false."));
            }

            stream = s.GetBoolean();
        }

        int? maxTokens = null;
        if (root.TryGetProperty("max_tokens", out var mt) && mt.ValueKind != JsonValueKind.Null)
        {
            if (mt.ValueKind != JsonValueKind.Number || !mt.TryGetInt32(out var value) || value < 1)
            {
                return (null, new InvokeRequestError("max_tokens", "max_tokens must be a positive integer."));
            }

            maxTokens = value;
        }

        // The idempotency key is read and checked by IdempotencyKeys.Resolve (header, then body).
        return (new InvokeRequest(messages, pool, agent, stream, maxTokens), null);
    }

    static bool OptionalString(JsonElement root, string name, int max, out string? value, out InvokeRequestError? error)
    {
        value = null;
        error = null;
        if (!root.TryGetProperty(name, out var e) || e.ValueKind == JsonValueKind.Null)
        {
            return true;
        }

        if (e.ValueKind != JsonValueKind.String || string.IsNullOrWhiteSpace(e.GetString()) || e.GetString()!.Length > max)
        {
            error = new InvokeRequestError(name, $"{name} must be a non-empty string of at most {max} characters.");
            return false;
        }

        value = e.GetString();
        return true;
    }
}
