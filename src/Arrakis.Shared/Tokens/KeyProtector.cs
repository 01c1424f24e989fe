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
            throw new KeyringMasterKeyException($"The keyring master key must be 32 bytes, not {masterKey.Length} (Keyring:MasterKey is base64 of 32 random bytes). Generate one with: openssl rand -base64 32");
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
        try
        {
            aes.Decrypt(nonce, cipher, tag, plain, System.Text.Encoding.UTF8.GetBytes(associatedData));
        }
        catch (AuthenticationTagMismatchException ex)
        {
            // Almost always a different master key (the CLI without the services' Keyring__MasterKey), not a damaged row.
            throw new KeyringMasterKeyException(
                $"Cannot decrypt signing key '{associatedData}': this master key is not the one that encrypted the keyring. "
                + "Use the services' master key (Keyring:MasterKey, env Keyring__MasterKey, or master.key in their data directory).", ex);
        }

        return plain;
    }

    /// <summary>Options that create a file readable and writable by its owner only (on Unix, from the first byte).</summary>
    public static FileStreamOptions OwnerOnly(FileMode mode)
    {
        var options = new FileStreamOptions { Mode = mode, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }

        return options;
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
            return new KeyProtector(Decode(configured, "Keyring:MasterKey"));
        }

        var dir = Storage.StorageOptions.DataDirectory(configuration);
        Directory.CreateDirectory(dir);
        var file = Path.Combine(dir, "master.key");
        if (!File.Exists(file))
        {
            var fresh = Convert.ToBase64String(RandomNumberGenerator.GetBytes(32));
            try
            {
                // Created 0600, never readable by others, not even between the create and a chmod.
                using var stream = new FileStream(file, OwnerOnly(FileMode.CreateNew));
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
                return new KeyProtector(Decode(text, file));
            }

            Thread.Sleep(10);
        }
    }

    static byte[] Decode(string base64, string source)
    {
        try
        {
            var key = Convert.FromBase64String(base64.Trim());
            return key.Length == 32
                ? key
                : throw new KeyringMasterKeyException($"The keyring master key in {source} must be 32 bytes, not {key.Length}. Generate one with: openssl rand -base64 32");
        }
        catch (FormatException ex)
        {
            throw new KeyringMasterKeyException($"The keyring master key in {source} is not base64. Generate one with: openssl rand -base64 32", ex);
        }
    }
}

/// <summary>The keyring master key is malformed, or is not the key that encrypted the stored private keys.</summary>
public sealed class KeyringMasterKeyException(string message, Exception? inner = null) : CryptographicException(message, inner);
