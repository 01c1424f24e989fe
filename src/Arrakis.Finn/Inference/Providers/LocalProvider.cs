using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using Arrakis.Shared.Contracts;
using Microsoft.Extensions.Options;

namespace Arrakis.Finn.Inference.Providers;

/// <summary>Per-model overrides of the local provider's behaviour (null = use the provider-wide value).</summary>
public sealed class LocalModelOptions
{
    public int? LatencyMs { get; set; }

    public int? TokenDelayMs { get; set; }

    public double? FailureRate { get; set; }

    public string? FailureKind { get; set; }

    public int? FailAfterTokens { get; set; }
}

/// <summary><c>Providers:Local</c>: the simulator's latency, failure rate and seed, with per-model overrides.</summary>
public sealed class LocalProviderOptions
{
    public const string Section = "Providers:Local";

    /// <summary>Delay before the first token.</summary>
    public int LatencyMs { get; set; }

    /// <summary>Delay between streamed tokens.</summary>
    public int TokenDelayMs { get; set; }

    /// <summary>Probability (0..1) that a call fails.</summary>
    public double FailureRate { get; set; }

    /// <summary><c>error</c> (a 5xx), <c>rate_limit</c> (a 429), <c>timeout</c> (hangs until the attempt times out) or <c>malformed</c>.</summary>
    public string FailureKind { get; set; } = "error";

    /// <summary>When a call fails, how many tokens it streams first (0 = fails before any output).</summary>
    public int FailAfterTokens { get; set; }

    /// <summary>Seed of the failure RNG, for reproducible chaos.</summary>
    public int Seed { get; set; } = 42;

    /// <summary>Overrides by model id, e.g. <c>Providers:Local:Models:local-mini-a:FailureRate=1</c>.</summary>
    public Dictionary<string, LocalModelOptions> Models { get; set; } = new(StringComparer.Ordinal);

    internal static readonly string[] Kinds = ["error", "rate_limit", "timeout", "malformed"];
}

/// <summary>
/// The built-in deterministic model simulator, so the stack runs with no API keys. Its answers are clearly simulated
/// (<c>simulated:true</c>): short, plausible text derived from the prompt, with honest token counts.
/// </summary>
public sealed partial class LocalProvider(IOptions<LocalProviderOptions> options, TimeProvider time) : IInferenceProvider
{
    readonly LocalProviderOptions _options = options.Value;
    readonly Random _chaos = new(options.Value.Seed);
    readonly Lock _chaosLock = new();

    public string Name => "local";

    public bool Simulated => true;

    public async IAsyncEnumerable<ProviderChunk> StreamAsync(ProviderRequest request, [EnumeratorCancellation] CancellationToken ct)
    {
        var model = _options.Models.TryGetValue(request.Model.Id, out var o) ? o : null;
        var latency = model?.LatencyMs ?? _options.LatencyMs;
        var tokenDelay = model?.TokenDelayMs ?? _options.TokenDelayMs;
        var failureRate = model?.FailureRate ?? _options.FailureRate;
        var failAfter = model?.FailAfterTokens ?? _options.FailAfterTokens;
        bool fail;
        lock (_chaosLock)
        {
            fail = failureRate > 0 && _chaos.NextDouble() < failureRate;
        }

        if (latency > 0)
        {
            await Task.Delay(TimeSpan.FromMilliseconds(latency), time, ct);
        }

        var text = Compose(request.Messages);
        var emitted = 0;
        foreach (var piece in Tokenizer.Pieces(text))
        {
            if (emitted >= request.MaxTokens)
            {
                break;
            }

            if (fail && emitted >= failAfter)
            {
                break;
            }

            if (tokenDelay > 0 && emitted > 0)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(tokenDelay), time, ct);
            }

            ct.ThrowIfCancellationRequested();
            emitted++;
            yield return new ProviderChunk(emitted == 1 ? piece.TrimStart() : piece);
        }

        if (fail)
        {
            var usage = new Usage(Tokenizer.PromptTokens(request.Messages), emitted);
            var kind = model?.FailureKind ?? _options.FailureKind;
            if (kind == "timeout")
            {
                await Task.Delay(Timeout.InfiniteTimeSpan, time, ct);
            }

            throw new UpstreamException(
                kind switch
                {
                    "rate_limit" => UpstreamFailure.RateLimited,
                    "malformed" => UpstreamFailure.Malformed,
                    _ => UpstreamFailure.ServerError,
                },
                $"simulated {kind} from local model {request.Model.Id}") { PartialUsage = usage };
        }

        var finish = emitted >= request.MaxTokens && Tokenizer.Count(text) > emitted ? "length" : "stop";
        yield return new ProviderChunk(null, new Usage(Tokenizer.PromptTokens(request.Messages), emitted), finish);
    }

    // ---- deterministic text ----
    static readonly string[] Greetings = ["Hello", "Hi", "Greetings", "Hey"];
    static readonly string[] GreetingWords = ["there", "friend", "and", "welcome", "to", "Arrakis", "from", "the", "local", "model", "today"];
    static readonly string[] ThreeWordGreetings = ["Hello there, friend!", "Hi there, friend!", "Greetings and welcome!", "Hello to you!"];
    static readonly string[] Templates =
    [
        "{T} is best understood by looking at how its parts interact.",
        "In short, {t} comes down to a few simple ideas applied consistently.",
        "A practical way to approach {t} is to start small, measure, and iterate.",
        "Most of the difficulty with {t} lies in the details rather than the concept.",
        "{T} rewards careful attention to feedback and to failure modes.",
        "It helps to ask what problem {t} solves before deciding how far to take it.",
        "Good examples of {t} tend to be simple, observable and easy to reverse.",
        "Over time, teams that practise {t} learn which signals actually matter.",
    ];

    static readonly HashSet<string> StopWords = new(StringComparer.OrdinalIgnoreCase)
    {
        "a", "an", "the", "in", "on", "of", "to", "and", "or", "is", "are", "be", "for", "with", "about", "what", "how", "why",
        "please", "write", "explain", "describe", "tell", "me", "say", "give", "one", "sentence", "word", "words", "exactly",
        "essay", "short", "long", "can", "you", "your", "my", "i", "it", "this", "that", "do", "does", "test", "some", "at",
    };

    static readonly Dictionary<string, int> Numbers = new(StringComparer.OrdinalIgnoreCase)
    {
        ["one"] = 1, ["two"] = 2, ["three"] = 3, ["four"] = 4, ["five"] = 5, ["six"] = 6, ["seven"] = 7, ["eight"] = 8, ["nine"] = 9, ["ten"] = 10,
    };

    [GeneratedRegex(@"exactly\s+(\d+|one|two|three|four|five|six|seven|eight|nine|ten)\s+words?", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant)]
    private static partial Regex ExactWords();

    [GeneratedRegex(@"\b(hello|hi|hey|greet|greeting|greetings)\b", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant)]
    private static partial Regex Greeting();

    [GeneratedRegex(@"\b(essay|in detail|at length|\d{3,}\s+words?)\b", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant)]
    private static partial Regex Long();

    [GeneratedRegex(@"\bone sentence\b", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant)]
    private static partial Regex OneSentence();

    [GeneratedRegex(@"[A-Za-z][A-Za-z'-]+", RegexOptions.CultureInvariant)]
    private static partial Regex Word();

    /// <summary>The full answer the simulator gives to a conversation; deterministic in its last user message.</summary>
    public static string Compose(IReadOnlyList<ChatMessage> messages)
    {
        var prompt = messages.LastOrDefault(m => m.Role == "user")?.Content ?? (messages.Count > 0 ? messages[^1].Content : null) ?? "";
        var seed = BitConverter.ToUInt32(SHA256.HashData(Encoding.UTF8.GetBytes(prompt)), 0);
        var greeting = Greeting().IsMatch(prompt);

        if (ExactWords().Match(prompt) is { Success: true } exact)
        {
            var n = int.TryParse(exact.Groups[1].Value, out var d) ? d : Numbers[exact.Groups[1].Value];
            n = Math.Clamp(n, 1, 50);
            if (greeting && n == 3)
            {
                return ThreeWordGreetings[seed % (uint)ThreeWordGreetings.Length];
            }

            var words = new List<string> { greeting ? Greetings[seed % (uint)Greetings.Length] : Capitalize(Topic(prompt)) };
            var pool = greeting ? GreetingWords : ["is", "simple", "and", "worth", "learning", "well", "with", "care", "every", "day", "again"];
            for (var i = 0; words.Count < n; i++)
            {
                words.Add(pool[(int)((seed + (uint)i) % (uint)pool.Length)]);
            }

            return string.Join(' ', words.Take(n)) + (greeting ? "!" : ".");
        }

        var topic = Topic(prompt);
        if (greeting && prompt.Length < 40)
        {
            string[] replies =
            [
                "Hi! I'm the local simulated model, happy to help.",
                "Hello! This is the simulated local provider saying hi.",
                "Hey there! The local model is up and running.",
            ];
            return replies[seed % (uint)replies.Length];
        }

        var sentences = OneSentence().IsMatch(prompt) ? 1 : Long().IsMatch(prompt) ? 400 : 2 + (int)(seed % 3);
        var sb = new StringBuilder();
        for (var i = 0; i < sentences; i++)
        {
            var template = Templates[(int)((seed + (uint)i) % (uint)Templates.Length)];
            if (sb.Length > 0)
            {
                sb.Append(' ');
            }

            sb.Append(template.Replace("{T}", Capitalize(topic), StringComparison.Ordinal).Replace("{t}", topic, StringComparison.Ordinal));
        }

        return sb.ToString();
    }

    static string Topic(string prompt)
    {
        var words = Word().Matches(prompt).Select(m => m.Value).Where(w => !StopWords.Contains(w)).ToList();
        if (words.Count == 0)
        {
            return "this topic";
        }

        // The two most telling words (longest first, ties by position) keep the answer on topic.
        var picked = words.Select((w, i) => (w, i)).OrderByDescending(x => x.w.Length).ThenBy(x => x.i).Take(2).OrderBy(x => x.i).Select(x => x.w.ToLowerInvariant());
        return string.Join(' ', picked);
    }

    static string Capitalize(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..];
}
