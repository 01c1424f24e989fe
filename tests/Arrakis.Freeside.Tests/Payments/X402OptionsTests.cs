using System.ComponentModel.DataAnnotations;
using Arrakis.Freeside.Payments;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Arrakis.Freeside.Tests.Payments;

/// <summary>X402 options fail at start-up with a message that says what to fix; recovery waits longer than any live request can take.</summary>
public sealed class X402OptionsTests
{
    static List<string> Errors(X402Options o) => [.. o.Validate(new ValidationContext(o)).SelectMany(r => r.MemberNames)];

    [Fact]
    public void The_defaults_are_valid() => Assert.Empty(Errors(new X402Options()));

    /// <summary>A value read from a secret file often ends in a newline; <c>$</c> let it through, and every payment then failed to match.</summary>
    [Fact]
    public void Addresses_and_keys_with_a_trailing_newline_fail_validation()
    {
        Assert.Equal([nameof(X402Options.PayTo)], Errors(new X402Options { PayTo = X402Options.TestPayTo + "\n" }));
        Assert.Equal([nameof(X402Options.Asset)], Errors(new X402Options { Asset = X402Options.BaseSepoliaUsdc + "\n" }));
        Assert.Equal([nameof(X402Options.RelayerKey)], Errors(new X402Options { Settler = SettlerKind.Direct, RelayerKey = PaymentSigning.RelayerKey + "\n" }));
        Assert.Empty(Errors(new X402Options { Settler = SettlerKind.Direct, RelayerKey = PaymentSigning.RelayerKey }));
    }

    static X402Options Bind(IDictionary<string, string?> settings) =>
        new ConfigurationBuilder().AddInMemoryCollection(settings.Where(kv => kv.Value is not null).ToDictionary(kv => "X402:" + kv.Key, kv => kv.Value)).Build()
            .GetSection(X402Options.Section).Get<X402Options>() ?? new X402Options();

    static List<ValidationResult> Validate(X402Options o)
    {
        var results = new List<ValidationResult>();
        Validator.TryValidateObject(o, new ValidationContext(o), results, validateAllProperties: true);
        return results;
    }

    [Fact]
    public void Defaults_recover_after_five_minutes_and_are_valid()
    {
        var o = new X402Options();
        Assert.Equal(300, o.RecoveryAfterSeconds);
        Assert.Empty(Validate(o));
    }

    // The finn call timeout is 60 s: the floor is the facilitator timeout + 60 s + 30 s.
    [Theory]
    [InlineData(150, null, true)]
    [InlineData(149, null, false)]
    [InlineData(120, null, false)]
    [InlineData(190, "100", true)]
    [InlineData(189, "100", false)]
    [InlineData(300, "210", true)]
    [InlineData(300, "211", false)]
    public void RecoveryAfterSeconds_must_cover_the_facilitator_and_finn_timeouts_plus_30_s(int recoveryAfter, string? facilitatorTimeout, bool valid)
    {
        var o = Bind(new Dictionary<string, string?>
        {
            ["RecoveryAfterSeconds"] = recoveryAfter.ToString(),
            ["FacilitatorTimeoutSeconds"] = facilitatorTimeout,
        });
        var errors = Validate(o);
        Assert.Equal(valid, errors.Count == 0);
        if (!valid)
        {
            Assert.Contains("X402:RecoveryAfterSeconds", Assert.Single(errors).ErrorMessage);
        }
    }

    [Fact]
    public async Task A_recovery_delay_shorter_than_a_live_request_fails_at_start_up()
    {
        var error = await Assert.ThrowsAsync<OptionsValidationException>(() =>
            PaymentHost.StartAsync("sqlite", new Dictionary<string, string?> { ["X402:RecoveryAfterSeconds"] = "120" }));
        Assert.Contains("X402:RecoveryAfterSeconds", error.Message);
    }

    [Fact]
    public void The_floor_uses_the_one_finn_timeout_constant()
    {
        var o = new X402Options { FacilitatorTimeoutSeconds = 45 };
        Assert.Equal(45 + (int)Arrakis.Freeside.Identity.IdentitySetup.FinnTimeout.TotalSeconds + 30, o.MinimumRecoveryAfterSeconds);
    }

    [Fact]
    public async Task The_finn_and_facilitator_clients_use_the_configured_timeouts()
    {
        await using var host = await PaymentHost.StartAsync("sqlite", new Dictionary<string, string?> { ["X402:FacilitatorTimeoutSeconds"] = "7" });
        var clients = host.App.Services.GetRequiredService<IHttpClientFactory>();
        Assert.Equal(Arrakis.Freeside.Identity.IdentitySetup.FinnTimeout, clients.CreateClient(Arrakis.Freeside.Identity.IdentitySetup.FinnClient).Timeout);
        Assert.Equal(TimeSpan.FromSeconds(7), clients.CreateClient(FacilitatorSettler.ClientName).Timeout);
    }
}
