using System.ComponentModel.DataAnnotations;
using Arrakis.Freeside.Payments;

namespace Arrakis.Freeside.Tests.Payments;

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
}
