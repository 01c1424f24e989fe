using Arrakis.Shared.Tokens;

namespace Arrakis.Shared.Tests.Tokens;

[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class KeyFileModeTests
{
    const UnixFileMode OwnerReadWrite = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    /// <summary>
    /// Key material is created readable by its owner only from the moment the file exists: while it is still being
    /// written, before any chmod (a file created with the defaults is 0644 under the usual umask until chmod runs).
    /// </summary>
    [Fact]
    public void A_key_file_is_owner_only_while_it_is_being_written()
    {
        var path = Path.Combine(TestStorage.TempDir(), "secret.key");
        using (var stream = new FileStream(path, KeyProtector.OwnerOnly(FileMode.CreateNew)))
        {
            Assert.Equal(OwnerReadWrite, File.GetUnixFileMode(path));
            stream.WriteByte(1);
        }

        Assert.Equal(OwnerReadWrite, File.GetUnixFileMode(path));
    }

    /// <summary>The keyring's generated master key ends up owner-only.</summary>
    [Fact]
    public void The_generated_master_key_is_owner_only()
    {
        var dir = TestStorage.TempDir();
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["LOA_DATA_DIR"] = dir }).Build();
        KeyProtector.FromConfiguration(configuration);
        Assert.Equal(OwnerReadWrite, File.GetUnixFileMode(Path.Combine(Arrakis.Shared.Storage.StorageOptions.DataDirectory(configuration), "master.key")));
    }
}
