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
}
