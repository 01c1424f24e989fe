using System.Security.Cryptography;

namespace Arrakis.Cli.Tests.Commands;

public sealed class KeysCommandTests : IDisposable
{
    readonly string _dataDir = Directory.CreateTempSubdirectory("loa-keys-").FullName;

    public void Dispose() => Directory.Delete(_dataDir, recursive: true);

    async Task<(int Exit, string Error)> LoaAsync(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var exit = await LoaProgram.RunAsync(args, output, error, TestContext.Current.CancellationToken);
        return (exit, error.ToString());
    }

    [Fact]
    public async Task Keys_with_another_master_key_fail_with_one_line_naming_the_master_key_not_a_stack_trace()
    {
        Assert.Equal(0, (await LoaAsync("keys", "list", "--data-dir", _dataDir)).Exit);
        // e.g. the services run with Keyring__MasterKey from Secrets Manager and the operator's shell has none (or another).
        await File.WriteAllTextAsync(Path.Combine(_dataDir, "master.key"), Convert.ToBase64String(RandomNumberGenerator.GetBytes(32)), TestContext.Current.CancellationToken);

        foreach (var args in new[] { new[] { "keys", "list" }, ["keys", "rotate"], ["keys", "revoke", "some-kid"] })
        {
            var (exit, error) = await LoaAsync([.. args, "--data-dir", _dataDir]);

            Assert.Equal(1, exit);
            var line = Assert.Single(error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Assert.Contains("Keyring:MasterKey", line, StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", error, StringComparison.Ordinal);
        }
    }

    /// <summary>
    /// <c>keys import --kid</c> took any string: <c>--kid ""</c> (a script's <c>--kid "$KID"</c> with KID unset) made
    /// the operator's key the active signing key under an empty kid, and a kid with a space or a newline broke the rows of
    /// <c>keys list</c>. Each is refused, exit 2, and the keyring is left as it was.
    /// </summary>
    [Theory]
    [InlineData("")]
    [InlineData("two words")]
    [InlineData("line\nbreak")]
    [InlineData("caf\u00e9")]
    public async Task Import_refuses_a_kid_that_is_empty_or_not_printable_ascii_and_changes_nothing(string kid)
    {
        var ct = TestContext.Current.CancellationToken;
        var (code, before, err) = await LoaProcess.RunAsync("keys", "list", "--data-dir", _dataDir);
        Assert.True(code == 0, err);
        using var ecdsa = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var pem = Path.Combine(_dataDir, "operator.pem");
        await File.WriteAllTextAsync(pem, ecdsa.ExportPkcs8PrivateKeyPem(), ct);

        var (exit, stdout, stderr) = await LoaProcess.RunAsync("keys", "import", "--data-dir", _dataDir, "--pem", pem, "--kid", kid);

        Assert.True(exit == 2, $"exit {exit}: {stdout}{stderr}");
        Assert.Contains("--kid must be 1-128 printable ASCII characters", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("IMPORTED", stdout, StringComparison.Ordinal);
        Assert.Equal(before, (await LoaProcess.RunAsync("keys", "list", "--data-dir", _dataDir)).Stdout);

        // The same key under a well-formed kid imports.
        (exit, stdout, stderr) = await LoaProcess.RunAsync("keys", "import", "--data-dir", _dataDir, "--pem", pem, "--kid", "operator-2026.1");
        Assert.True(exit == 0, stderr);
        Assert.Contains("IMPORTED kid=operator-2026.1 status=active", stdout, StringComparison.Ordinal);
    }
}
