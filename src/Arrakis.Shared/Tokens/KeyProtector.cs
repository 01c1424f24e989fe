using System.Security.Cryptography;

namespace Arrakis.Shared.Tokens;

/// <summary>Encrypts private keys at rest with AES-256-GCM under the keyring master key.</summary>
public sealed class KeyProtector
{
    const int NonceSize = 12;
    const int TagSize = 16;
    readonly byte[] _key;

    public KeyProtector(byte[] masterKey)
    {
        if (masterKey.Length != 32)
        {
            throw new ArgumentException("The keyring master key must be 32 bytes (base64 of 32 random bytes). Generate one with: openssl rand -base64 32", nameof(masterKey));
        }

        _key = masterKey;
    }

    public string Protect(byte[] plaintext, string associatedData)
    {
        var nonce = RandomNumberGenerator.GetBytes(NonceSize);
        var cipher = new byte[plaintext.Length];
        var tag = new byte[TagSize];
        using var aes = new AesGcm(_key, TagSize);
        aes.Encrypt(nonce, plaintext, cipher, tag, System.Text.Encoding.UTF8.GetBytes(associatedData));
        return "v1." + Convert.ToBase64String([.. nonce, .. tag, .. cipher]);
    }

    public byte[] Unprotect(string protectedValue, string associatedData)
    {
        if (!protectedValue.StartsWith("v1.", StringComparison.Ordinal))
        {
            throw new CryptographicException("Unknown key envelope version.");
        }

        var blob = Convert.FromBase64String(protectedValue[3..]);
        var nonce = blob.AsSpan(0, NonceSize);
        var tag = blob.AsSpan(NonceSize, TagSize);
        var cipher = blob.AsSpan(NonceSize + TagSize);
        var plain = new byte[cipher.Length];
        using var aes = new AesGcm(_key, TagSize);
        aes.Decrypt(nonce, cipher, tag, plain, System.Text.Encoding.UTF8.GetBytes(associatedData));
        return plain;
    }

    /// <summary>
    /// Reads <c>Keyring:MasterKey</c> (base64). Without it, uses <c>master.key</c> in the data directory, creating it
    /// on first run, which is what a fresh <c>loa up</c> relies on.
    /// </summary>
    public static KeyProtector FromConfiguration(IConfiguration configuration)
    {
        var configured = configuration["Keyring:MasterKey"];
        if (!string.IsNullOrWhiteSpace(configured))
        {
            return new KeyProtector(Convert.FromBase64String(configured.Trim()));
        }

        var dir = Storage.StorageOptions.DataDirectory(configuration);
        Directory.CreateDirectory(dir);
        var file = Path.Combine(dir, "master.key");
        if (!File.Exists(file))
        {
            var fresh = Convert.ToBase64String(RandomNumberGenerator.GetBytes(32));
            try
            {
                using var stream = new FileStream(file, FileMode.CreateNew, FileAccess.Write);
                using var writer = new StreamWriter(stream);
                writer.Write(fresh);
            }
            catch (IOException) when (File.Exists(file))
            {
                // Another service in the same process created it first.
            }

            if (!OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(file, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            }
        }

        for (var attempt = 0; ; attempt++)
        {
            var text = File.ReadAllText(file).Trim();
            if (text.Length > 0 || attempt > 50)
            {
                return new KeyProtector(Convert.FromBase64String(text));
            }

            Thread.Sleep(10);
        }
    }
}
