using System.Text.RegularExpressions;
using Arrakis.Shared.Contracts;

namespace Arrakis.Finn.Inference.Providers;

/// <summary>
/// A simple deterministic tokenizer: words and single punctuation marks. Each token covers at least one UTF-8 byte,
/// so counts stay under <see cref="TokenMath.InputUpperBound"/> which freeside reserves against.
/// </summary>
public static partial class Tokenizer
{
    [GeneratedRegex(@"(?<word>\w+)|[^\w\s]", RegexOptions.CultureInvariant)]
    private static partial Regex TokenPattern();

    public static int Count(string text) => TokenPattern().Count(text);

    /// <summary>
    /// Counts a text that grows by deltas, as <see cref="Count"/> would count the whole text so far, without counting it
    /// again on every delta (which grew with the square of the answer's length). Only a word token that touches the end
    /// can still grow, so the count is kept up to that token's start and the rest is counted again on the next delta.
    /// </summary>
    public sealed class Running
    {
        readonly System.Text.StringBuilder _text = new();
        int _stableEnd;
        int _stableCount;

        /// <summary>Appends <paramref name="delta"/> and returns the token count of everything appended so far.</summary>
        public int Add(string delta)
        {
            _text.Append(delta);
            var tail = _text.ToString(_stableEnd, _text.Length - _stableEnd);
            var count = 0;
            Match? last = null;
            for (var m = TokenPattern().Match(tail); m.Success; m = m.NextMatch())
            {
                count++;
                last = m;
            }

            var total = _stableCount + count;
            if (last is not null && last.Index + last.Length == tail.Length && last.Groups["word"].Success)
            {
                // The last token is a word that the next delta may continue: count it again then.
                _stableEnd += last.Index;
                _stableCount += count - 1;
            }
            else
            {
                _stableEnd = _text.Length;
                _stableCount = total;
            }

            return total;
        }
    }

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
