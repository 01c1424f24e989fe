using System.Diagnostics.Metrics;
using System.Text;
using System.Text.Json;
using Arrakis.Shared.Caching;
using Arrakis.Shared.Hosting;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Microsoft.IdentityModel.Tokens;

namespace Arrakis.Shared.Tests.Hosting;

public sealed class JsonLinesFormatterTests
{
    /// <summary>
    /// An anonymous caller chooses the kid its token names, and the refusal repeats it: a kid of "budget_exceeded" wrote
    /// the conservation alarm's lowercase term into a log line (DESIGN §8 forbids it in any line), so one unauthenticated
    /// request raised the critical alarm. The line must stay one valid JSON object that still carries the kid as sent.
    /// </summary>
    [Fact]
    public async Task A_caller_chosen_value_never_writes_the_conservation_term_into_a_log_line()
    {
        var lines = new List<string>();
        using var logs = new LoggerFactory([new FormatterLoggerProvider("freeside", lines)]);
        var meters = new ServiceCollection().AddMetrics().BuildServiceProvider().GetRequiredService<IMeterFactory>();
        var verifier = new TokenVerifier(new MemoryReplayCache(TimeProvider.System), TimeProvider.System, logs.CreateLogger<TokenVerifier>(), meters);
        var policy = new TokenPolicy("user", new Dictionary<string, IKeySource> { ["arrakis"] = new NoKeys() }, ["arrakis"], TimeSpan.FromMinutes(15));
        var token = Base64UrlEncoder.Encode("""{"alg":"ES256","kid":"budget_exceeded"}""") + "." + Base64UrlEncoder.Encode("""{"iss":"arrakis"}""") + "."
            + Base64UrlEncoder.Encode(new byte[64]);

        var result = await verifier.VerifyAsync(token, policy, TestContext.Current.CancellationToken);

        Assert.Equal("unknown kid: budget_exceeded", result.Failure);
        var line = Assert.Single(lines);
        Assert.EndsWith("\n", line, StringComparison.Ordinal);
        Assert.Single(line.TrimEnd('\n').Split('\n'));
        Assert.DoesNotContain("budget_exceeded", line, StringComparison.Ordinal);
        using var doc = JsonDocument.Parse(line);
        Assert.Equal("JWT_VALIDATION_FAILED", doc.RootElement.GetProperty("event").GetString());
        Assert.Equal("unknown kid: budget_exceeded", doc.RootElement.GetProperty("reason").GetString()); // what was sent, to a JSON reader
    }

    sealed class NoKeys : IKeySource
    {
        public ValueTask<IReadOnlyList<SigningKey>> GetKeysAsync(string? kid, CancellationToken ct) => ValueTask.FromResult<IReadOnlyList<SigningKey>>([]);
    }
}
