using System.Diagnostics.CodeAnalysis;
using System.Text.RegularExpressions;

namespace Arrakis.Shared.Contracts;

/// <summary>
/// Agent routing keys: <c>nft:&lt;id&gt;</c> or <c>nft:&lt;contract&gt;:&lt;token&gt;</c>, checked the same way by freeside,
/// finn and dixie. The pattern ends in <c>\z</c>: <c>$</c> also matches before a final newline, so <c>"nft:1\n"</c> would pass.
/// </summary>
public static partial class RoutingKey
{
    public const int MaxLength = 200;

    /// <summary>The shape, for messages that say how to fix a key.</summary>
    public const string Shape = "nft:<id> or nft:<contract>:<token> (letters, digits, '_' and '-')";

    [GeneratedRegex(@"^nft:[A-Za-z0-9_-]{1,128}(?::[A-Za-z0-9_-]{1,128})?\z", RegexOptions.CultureInvariant)]
    private static partial Regex Pattern();

    public static bool IsValid([NotNullWhen(true)] string? key) => key is { Length: > 0 and <= MaxLength } && Pattern().IsMatch(key);

    [GeneratedRegex(@"^nft:0[xX][0-9A-Fa-f]{40}:", RegexOptions.CultureInvariant)]
    private static partial Regex ContractPrefix();

    /// <summary>
    /// The one spelling of a valid key: in <c>nft:&lt;contract&gt;:&lt;token&gt;</c> a contract that is a 0x address is
    /// lowercased. Hex addresses are case-insensitive, and wallets show them mixed-case (EIP-55 checksums), so
    /// <c>nft:0xAbC…:1</c> and <c>nft:0xabc…:1</c> must be one agent, with one reputation and one usage history. Every
    /// other key is kept as it is.
    /// </summary>
    public static string Canonical(string key) =>
        ContractPrefix().IsMatch(key) ? key[..46].ToLowerInvariant() + key[46..] : key; // "nft:0x" and 40 hex digits
}
