using Arrakis.Shared.Hosting;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace Arrakis.Shared.Tests.Hosting;

public sealed class ServiceMainTests
{
    /// <summary>
    /// A stop asked for while the service is still starting (ECS stopping a task that has not finished starting) ends
    /// the process with 0 and no STARTUP_FAILED line. Before, the cancelled start escaped as an unhandled
    /// TaskCanceledException: a stack trace and exit code 134.
    /// </summary>
    [Fact]
    public async Task A_stop_requested_while_starting_exits_0_without_a_failure_line()
    {
        var output = new StringWriter();

        var exit = await ServiceMain.RunAsync("test", ["--urls", "http://127.0.0.1:0"], args =>
        {
            var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = args });
            builder.Services.AddHostedService<StopsWhileStarting>();
            return Task.FromResult(builder.Build());
        }, output).WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);

        Assert.Equal(0, exit);
        Assert.Equal("", output.ToString());
    }

    [Fact]
    public async Task A_start_that_throws_is_one_STARTUP_FAILED_line_and_exit_1()
    {
        var output = new StringWriter();

        var exit = await ServiceMain.RunAsync("test", [], _ => throw new InvalidOperationException("Some:Setting must be positive."), output);

        Assert.Equal(1, exit);
        var line = Assert.Single(output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains("\"message\":\"STARTUP_FAILED test did not start: Some:Setting must be positive.\"", line, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("00:00:00", null, "Keyring:MaxTokenLifetime")]
    [InlineData("-00:01:00", null, "Keyring:MaxTokenLifetime")]
    [InlineData("15", null, "Keyring:MaxTokenLifetime")] // 15 days, meant as minutes
    [InlineData("00:15:00", "00:00:10", "Keyring:ReloadInterval")]
    public void Keyring_settings_that_would_break_token_checks_are_refused_naming_the_setting(string lifetime, string? reload, string setting)
    {
        var options = new KeyringOptions { MaxTokenLifetime = TimeSpan.Parse(lifetime, System.Globalization.CultureInfo.InvariantCulture) };
        if (reload is not null)
        {
            options.ReloadInterval = TimeSpan.Parse(reload, System.Globalization.CultureInfo.InvariantCulture);
        }

        Assert.StartsWith(setting + " must be", Assert.Throws<InvalidOperationException>(() => options.Validate()).Message, StringComparison.Ordinal);
        Assert.Equal(TimeSpan.FromMinutes(15), new KeyringOptions().Validate().MaxTokenLifetime); // the defaults pass
    }

    sealed class StopsWhileStarting(IHostApplicationLifetime lifetime) : IHostedService
    {
        public async Task StartAsync(CancellationToken cancellationToken)
        {
            lifetime.StopApplication();
            await Task.Delay(Timeout.Infinite, cancellationToken);
        }

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
