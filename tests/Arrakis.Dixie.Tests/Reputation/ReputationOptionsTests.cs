using Arrakis.Dixie.Reputation;

namespace Arrakis.Dixie.Tests.Reputation;

public sealed class ReputationOptionsTests
{
    /// <summary>
    /// Settings that would break the math later are refused at start-up with the setting's name: a half-life past
    /// TimeSpan's range (it threw OverflowException when the first score was computed), NaN, and infinite windows.
    /// </summary>
    [Theory]
    [InlineData(1e9, 12, 0, 5, "HalfLifeDays")]
    [InlineData(double.NaN, 12, 0, 5, "HalfLifeDays")]
    [InlineData(0, 12, 0, 5, "HalfLifeDays")]
    [InlineData(7, double.NaN, 0, 5, "EvidenceWindow")]
    [InlineData(7, 12, double.PositiveInfinity, 5, "EvidenceWindow")]
    [InlineData(7, 0.5, 0, 5, "EvidenceWindow")]
    [InlineData(7, 12, 0, double.NaN, "CacheSeconds")]
    [InlineData(7, 12, 0, 10, "CacheSeconds")]
    public void Settings_outside_their_range_are_refused_naming_the_setting(double halfLife, double modelWindow, double agentWindow, double cacheSeconds, string named)
    {
        var options = new ReputationOptions
        {
            HalfLifeDays = halfLife,
            ModelEvidenceWindow = modelWindow,
            AgentEvidenceWindow = agentWindow,
            CacheSeconds = cacheSeconds,
        };

        var error = Assert.Throws<InvalidOperationException>(options.Validate);
        Assert.Contains(named, error.Message, StringComparison.Ordinal);
    }

    /// <summary>The largest accepted half-life still gives working math: a score decays without overflowing.</summary>
    [Theory]
    [InlineData(ReputationOptions.MaxHalfLifeDays, 12, 0, 0)]
    [InlineData(0.01, 0, 1, 9)]
    [InlineData(7, 12, 0, 5)]
    public void Settings_within_their_range_are_accepted_and_usable(double halfLife, double modelWindow, double agentWindow, double cacheSeconds)
    {
        var options = new ReputationOptions
        {
            HalfLifeDays = halfLife,
            ModelEvidenceWindow = modelWindow,
            AgentEvidenceWindow = agentWindow,
            CacheSeconds = cacheSeconds,
        };

        options.Validate();
        var oneDayMs = (long)TimeSpan.FromDays(1).TotalMilliseconds;
        var expected = Math.Pow(0.5, 1 / halfLife);
        Assert.Equal(expected, options.AgentMath().DecayFactor(0, oneDayMs), 9);
        Assert.Equal(expected, options.ModelMath().DecayFactor(0, oneDayMs), 9);
    }

    /// <summary>
    /// A service process that refuses a setting ends with exit code 1 and one JSON log line naming the service and the
    /// setting. Before, the host let the exception escape: a multi-line stack trace and exit code 134 (abort).
    /// </summary>
    [Fact]
    public async Task A_refused_setting_stops_the_service_process_with_one_STARTUP_FAILED_line_and_exit_1()
    {
        var output = new StringWriter();
        var args = new[] { "--urls", "http://127.0.0.1:0", "--LOA_DATA_DIR", TestStorage.TempDir(), "--Reputation:HalfLifeDays", "100000" };

        var exit = await Arrakis.Shared.Hosting.ServiceMain.RunAsync("dixie", args, a => DixieService.CreateAsync(a), output);

        Assert.Equal(1, exit);
        var lines = output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var line = Assert.Single(lines);
        using var json = System.Text.Json.JsonDocument.Parse(line);
        Assert.Equal("critical", json.RootElement.GetProperty("level").GetString());
        Assert.Equal("dixie", json.RootElement.GetProperty("service").GetString());
        Assert.Equal("STARTUP_FAILED", json.RootElement.GetProperty("event").GetString());
        Assert.StartsWith("STARTUP_FAILED dixie did not start: Reputation:HalfLifeDays must be", json.RootElement.GetProperty("message").GetString(), StringComparison.Ordinal);
        Assert.Contains("ReputationOptions.Validate", json.RootElement.GetProperty("exception").GetString(), StringComparison.Ordinal);
    }
}
