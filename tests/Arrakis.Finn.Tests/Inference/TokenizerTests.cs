using Arrakis.Finn.Inference.Providers;

namespace Arrakis.Finn.Tests.Inference;

public sealed class TokenizerTests
{
    /// <summary>
    /// The running count of a streamed answer equals the count of the whole text so far after every delta, however the
    /// deltas cut it: inside words, between a word and its punctuation, on whitespace, inside a surrogate pair, after
    /// combining marks and underscores (both word characters).
    /// </summary>
    [Fact]
    public void The_running_count_equals_a_full_count_after_every_delta_wherever_the_deltas_cut()
    {
        const string alphabet = "ab_9 Zé\u0301,.!?-\n\t日本😀'\"(x)";
        var rng = new Random(20261129);
        for (var round = 0; round < 500; round++)
        {
            var text = string.Concat(Enumerable.Range(0, rng.Next(0, 200)).Select(_ => alphabet[rng.Next(alphabet.Length)]));
            var running = new Tokenizer.Running();
            var at = 0;
            while (at < text.Length)
            {
                var cut = Math.Min(text.Length, at + rng.Next(1, 12));
                var total = running.Add(text[at..cut]);
                Assert.True(Tokenizer.Count(text[..cut]) == total, $"round {round}, after '{text[..cut]}': running {total}, full {Tokenizer.Count(text[..cut])}");
                at = cut;
            }
        }
    }

    [Fact]
    public void A_word_continued_across_deltas_counts_once()
    {
        var running = new Tokenizer.Running();
        Assert.Equal(1, running.Add("hel"));
        Assert.Equal(1, running.Add("lo"));
        Assert.Equal(2, running.Add(","));
        Assert.Equal(3, running.Add(" wor"));
        Assert.Equal(3, running.Add("ld"));
        Assert.Equal(3, running.Add(" "));
        Assert.Equal(3, running.Add(""));
    }
}
