using Arrakis.Shared.Contracts;

namespace Arrakis.Shared.Tests.Contracts;

public sealed class RoutingKeyTests
{
    [Theory]
    [InlineData("nft:1")]
    [InlineData("nft:test")]
    [InlineData("nft:0x0000000000000000000000000000000000000001:42")]
    [InlineData("nft:a_b-c")]
    public void Keys_of_the_documented_shape_are_valid(string key) => Assert.True(RoutingKey.IsValid(key));

    [Theory]
    [InlineData("nft:1\n")] // $ matches before a final newline; \z does not
    [InlineData("nft:a:b\n")]
    [InlineData("nft:1\r\n")]
    [InlineData("\nnft:1")]
    [InlineData("nft:1\nnft:2")]
    [InlineData("nft:")]
    [InlineData("nft:a:b:c")]
    [InlineData("nft:a b")]
    [InlineData("nft:a.b")]
    [InlineData("wallet:1")]
    [InlineData("")]
    [InlineData(null)]
    public void Anything_else_is_invalid(string? key) => Assert.False(RoutingKey.IsValid(key));

    [Fact]
    public void Length_is_bounded()
    {
        Assert.False(RoutingKey.IsValid("nft:" + new string('x', 129)));
        Assert.True(RoutingKey.IsValid("nft:" + new string('x', 128) + ":" + new string('y', 60)));
        Assert.False(RoutingKey.IsValid("nft:" + new string('x', 128) + ":" + new string('y', 128))); // 261 > MaxLength
    }

    [Theory]
    [InlineData("nft:0xAbCdEf0000000000000000000000000000000001:42", "nft:0xabcdef0000000000000000000000000000000001:42")]
    [InlineData("nft:0XABCDEF0000000000000000000000000000000001:Token_A", "nft:0xabcdef0000000000000000000000000000000001:Token_A")] // the token keeps its case
    [InlineData("nft:0xabcdef0000000000000000000000000000000001:42", "nft:0xabcdef0000000000000000000000000000000001:42")]
    [InlineData("nft:Test", "nft:Test")] // not an address: kept
    [InlineData("nft:0xABC:1", "nft:0xABC:1")] // too short to be an address: kept
    [InlineData("nft:0xAbCdEf0000000000000000000000000000000001", "nft:0xAbCdEf0000000000000000000000000000000001")] // one part: an id, kept
    public void Canonical_lowercases_only_a_0x_address_contract(string key, string canonical)
    {
        Assert.True(RoutingKey.IsValid(key));
        Assert.Equal(canonical, RoutingKey.Canonical(key));
        Assert.True(RoutingKey.IsValid(RoutingKey.Canonical(key)));
    }
}
