using Arrakis.Freeside.Payments;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Arrakis.Freeside.Tests.Payments;

public sealed class X402PlaceholderWarningTests
{
    sealed class Recorder : ILogger<X402PlaceholderWarning>
    {
        public List<(LogLevel Level, string Event, string Message)> Lines { get; } = [];

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            Lines.Add((logLevel, eventId.Name ?? "", formatter(state, exception)));
    }

    [Theory]
    [InlineData(X402Options.TestPayTo, true)]
    [InlineData("0xA0EE7A142D267C1F36714E4A8F75612F20A79720", true)]
    [InlineData("0x1111111111111111111111111111111111111111", false)]
    public async Task Start_up_warns_once_when_payments_would_go_to_the_development_placeholder(string payTo, bool warns)
    {
        var log = new Recorder();
        var warning = new X402PlaceholderWarning(Options.Create(new X402Options { PayTo = payTo }), log);

        await warning.StartAsync(TestContext.Current.CancellationToken);

        if (warns)
        {
            var line = Assert.Single(log.Lines);
            Assert.Equal((LogLevel.Warning, "X402_PAYTO_PLACEHOLDER"), (line.Level, line.Event));
            Assert.Contains("X402__PayTo", line.Message, StringComparison.Ordinal);
        }
        else
        {
            Assert.Empty(log.Lines);
        }
    }
}
