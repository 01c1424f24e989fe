using System.Text.RegularExpressions;
using Arrakis.Shared.Contracts;

namespace Arrakis.Finn.Inference.Providers;

/// <summary>
/// A simple deterministic tokenizer: words and single punctuation marks. Each token covers at least one UTF-8 byte,
/// so counts stay under <see cref="TokenMath.InputUpperBound"/> which freeside reserves against.
/// </summary>
public static partial class Tokenizer
{
    [GeneratedRegex(@"\w+|[^\w\s]", RegexOptions.CultureInvariant)]
    private static partial Regex TokenPattern();

    public static int Count(string text) => TokenPattern().Count(text);

    /// <summary>Prompt tokens of a conversation: 3 for the frame, plus per message 4 and its content's tokens.</summary>
    public static long PromptTokens(IEnumerable<ChatMessage> messages) => 3 + messages.Sum(m => 4L + Count(m.Content));

    /// <summary>Splits text into streamable pieces, one token each, keeping the whitespace before a token.</summary>
    public static IEnumerable<string> Pieces(string text)
    {
        var last = 0;
        foreach (Match m in TokenPattern().Matches(text))
        {
            yield return text[last..(m.Index + m.Length)];
            last = m.Index + m.Length;
        }
    }
}
