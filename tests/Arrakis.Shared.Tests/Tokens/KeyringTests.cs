using Arrakis.Shared.Storage;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;

namespace Arrakis.Shared.Tests.Tokens;

public sealed class KeyringTests
{
    static async Task<(Keyring Keyring, FakeTimeProvider Time, Database Db)> NewKeyringAsync(string engine)
    {
        var db = new Database(TestStorage.Options(engine, "freeside"));
        await new Migrator(db).ApplyAsync(Migrator.FromAssembly(typeof(Database).Assembly, db.Engine));
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var keyring = new Keyring(new KeyStore(db, new KeyProtector(new byte[32])), time, new KeyringOptions(), NullLogger<Keyring>.Instance);
        await keyring.InitializeAsync(TestContext.Current.CancellationToken);
        return (keyring, time, db);
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task First_start_creates_exactly_one_active_key(string engine)
    {
        var (keyring, _, db) = await NewKeyringAsync(engine);
        await using var _ = db;

        Assert.NotNull(keyring.Current.Active);
        Assert.Single(keyring.Current.All, k => k.Status == KeyStatus.Active);
        Assert.Equal(keyring.Current.Active!.Kid, keyring.Current.Published[0].Kid);
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Rotation_publishes_pending_then_promotes_after_delay_and_keeps_retired_published(string engine)
    {
        var (keyring, time, db) = await NewKeyringAsync(engine);
        await using var _ = db;
        var first = keyring.Current.Active!.Kid;

        var next = await keyring.RotateAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);

        Assert.Equal(first, keyring.Current.Active!.Kid);
        Assert.Equal([first, next], keyring.Current.Published.Select(k => k.Kid));

        time.Advance(TimeSpan.FromSeconds(61));
        await keyring.ReloadAsync(TestContext.Current.CancellationToken);
        Assert.Equal(next, keyring.Current.Active!.Kid);
        Assert.Equal([next, first], keyring.Current.Published.Select(k => k.Kid));

        time.Advance(TimeSpan.FromMinutes(16));
        await keyring.ReloadAsync(TestContext.Current.CancellationToken);
        Assert.Equal([next], keyring.Current.Published.Select(k => k.Kid));
    }

    [Fact]
    public async Task A_token_signed_just_before_retirement_verifies_until_it_expires_with_the_clock_skew()
    {
        var (keyring, time, db) = await NewKeyringAsync("sqlite");
        await using var _ = db;
        var meters = new ServiceCollection().AddMetrics().BuildServiceProvider()
            .GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>();
        var verifier = new TokenVerifier(new Arrakis.Shared.Caching.MemoryReplayCache(time), time, NullLogger<TokenVerifier>.Instance, meters);
        var policy = new TokenPolicy("user", new Dictionary<string, IKeySource> { ["arrakis"] = new LocalKeySource(keyring) }, ["arrakis"], keyring.Options.MaxTokenLifetime);
        var token = TokenIssuer.Mint(keyring.Current.Active!, "arrakis", "arrakis", new Dictionary<string, object>(), keyring.Options.MaxTokenLifetime, time.GetUtcNow());

        await keyring.RotateAsync(TimeSpan.Zero, TestContext.Current.CancellationToken);
        // Past exp, inside the 30 s skew every verifier allows: the token is still valid, so its key must still be published.
        time.Advance(keyring.Options.MaxTokenLifetime + TimeSpan.FromSeconds(20));
        await keyring.ReloadAsync(TestContext.Current.CancellationToken);

        var result = await verifier.VerifyAsync(token, policy, TestContext.Current.CancellationToken);
        Assert.True(result.Succeeded, result.Failure);
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Revoking_the_active_key_unpublishes_it_and_activates_a_new_one(string engine)
    {
        var (keyring, _, db) = await NewKeyringAsync(engine);
        await using var _ = db;
        var first = keyring.Current.Active!.Kid;

        var previous = await keyring.RevokeAsync(first, TestContext.Current.CancellationToken);

        Assert.Equal(KeyStatus.Active, previous);
        Assert.NotEqual(first, keyring.Current.Active!.Kid);
        Assert.DoesNotContain(keyring.Current.Published, k => k.Kid == first);
        Assert.Null(await keyring.RevokeAsync("no-such-kid", TestContext.Current.CancellationToken));
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Revoking_the_active_key_never_leaves_the_keyring_without_an_active_key(string engine)
    {
        // A replica reloads every 2 s. The revocation and the next key's activation were two transactions, and a replica
        // reloading between them had no key to sign with (every invoke failed) until its next reload.
        var (keyring, _, db) = await NewKeyringAsync(engine);
        await using var _ = db;
        var ct = TestContext.Current.CancellationToken;
        var pending = await keyring.RotateAsync(TimeSpan.FromHours(1), ct);
        var (reads, empty) = (0, 0);
        using var stop = new CancellationTokenSource();
        var reader = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                await using var connection = await db.OpenAsync(ct);
                await using var command = connection.CreateCommand();
                command.CommandText = "SELECT count(*) FROM signing_keys WHERE status = 'active'";
                var active = Convert.ToInt64(await command.ExecuteScalarAsync(ct), System.Globalization.CultureInfo.InvariantCulture);
                empty += active == 0 ? 1 : 0;
                Interlocked.Increment(ref reads);
            }
        }, ct);

        // The reader polls freely while the keys change. On a busy machine its thread may start late, or the 30
        // revocations (a few ms each on SQLite) may all run before it gets a turn; so the reader must have read before
        // the first revocation and again after each one, which makes every revocation overlap reads.
        await ReaderReadsAsync(0);
        // The first revocation hands over to the pending key, the others to a fresh key each.
        var first = keyring.Current.Active!.Kid;
        for (var i = 0; i < 30; i++)
        {
            var before = Volatile.Read(ref reads);
            Assert.Equal(KeyStatus.Active, await keyring.RevokeAsync(keyring.Current.Active!.Kid, ct));
            if (i == 0)
            {
                Assert.Equal(pending, keyring.Current.Active!.Kid);
            }

            await ReaderReadsAsync(before);
        }

        await stop.CancelAsync();
        await reader;
        Assert.True(reads > 30, $"only {reads} reads");
        Assert.Equal(0, empty);
        Assert.Single(keyring.Current.All, k => k.Status == KeyStatus.Active);
        Assert.Equal(30, keyring.Current.All.Count(k => k.Status == KeyStatus.Revoked));
        Assert.Contains(keyring.Current.All, k => k.Kid == first && k.Status == KeyStatus.Revoked);

        async Task ReaderReadsAsync(int after)
        {
            var deadline = DateTime.UtcNow.AddSeconds(30);
            while (Volatile.Read(ref reads) <= after)
            {
                if (reader.IsCompleted)
                {
                    await reader;
                    Assert.Fail("the reader stopped");
                }

                Assert.True(DateTime.UtcNow < deadline, $"the reader made no read in 30 s (read {after} times)");
                await Task.Delay(1, ct);
            }
        }
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Concurrent_key_changes_leave_exactly_one_active_key_and_throw_nothing(string engine)
    {
        // Replicas promote due keys on their own timers, and an operator may revoke meanwhile. On PostgreSQL two such
        // changes each read the old active key before the other committed; the second hit the one-active-key index.
        var (keyring, _, db) = await NewKeyringAsync(engine);
        await using var _ = db;
        var ct = TestContext.Current.CancellationToken;
        var store = new KeyStore(db, new KeyProtector(new byte[32]));
        for (var round = 0; round < 10; round++)
        {
            var a = await keyring.RotateAsync(TimeSpan.FromHours(1), ct);
            var b = await keyring.RotateAsync(TimeSpan.FromHours(1), ct);
            var active = keyring.Current.Active!.Kid;
            var now = DateTimeOffset.UtcNow;
            await Task.WhenAll(
                Task.Run(() => store.ActivateAsync(a, now, ct), ct),
                Task.Run(() => store.ActivateAsync(b, now, ct), ct),
                Task.Run(() => store.RevokeAsync(active, now, () => throw new InvalidOperationException("a key is pending"), ct), ct));

            var keys = await store.ListAsync(ct);
            Assert.Single(keys, k => k.Status == KeyStatus.Active);
            Assert.Equal(KeyStatus.Revoked, keys.Single(k => k.Kid == active).Status);
            await keyring.ReloadAsync(ct);
        }
    }

    sealed record StoredKey(string status, string? private_key_enc, string public_x, string public_y, long? retired_at, long? revoked_at);

    static async Task<StoredKey> StoredAsync(Database db, string kid)
    {
        await using var connection = await db.OpenAsync(TestContext.Current.CancellationToken);
        return await Dapper.SqlMapper.QuerySingleAsync<StoredKey>(connection,
            "SELECT status, private_key_enc, public_x, public_y, retired_at, revoked_at FROM signing_keys WHERE kid = @kid", new { kid });
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Revoking_a_key_destroys_its_stored_private_key_and_keeps_the_row(string engine)
    {
        // A revoked key is compromised or unwanted, yet its encrypted private key stayed in the table forever.
        var (keyring, time, db) = await NewKeyringAsync(engine);
        await using var _ = db;
        var ct = TestContext.Current.CancellationToken;
        var first = keyring.Current.Active!;
        var pending = await keyring.RotateAsync(TimeSpan.FromHours(1), ct);
        Assert.NotNull((await StoredAsync(db, first.Kid)).private_key_enc);

        Assert.Equal(KeyStatus.Active, await keyring.RevokeAsync(first.Kid, ct));
        var next = await keyring.RotateAsync(TimeSpan.FromHours(1), ct);
        Assert.Equal(KeyStatus.Pending, await keyring.RevokeAsync(next, ct));

        foreach (var kid in new[] { first.Kid, next })
        {
            var row = await StoredAsync(db, kid);
            Assert.Equal("revoked", row.status);
            Assert.Null(row.private_key_enc);
            Assert.NotNull(row.revoked_at);
            Assert.Contains(keyring.Current.All, k => k.Kid == kid && k.Status == KeyStatus.Revoked && k.Private is null);
        }

        var revokedRow = await StoredAsync(db, first.Kid);
        Assert.Equal((first.X, first.Y), (revokedRow.public_x, revokedRow.public_y));

        // Revoked again later: it keeps the time of its first revocation (it was overwritten, losing the history).
        time.Advance(TimeSpan.FromMinutes(5));
        Assert.Equal(KeyStatus.Revoked, await keyring.RevokeAsync(first.Kid, ct));
        Assert.Equal(revokedRow.revoked_at, (await StoredAsync(db, first.Kid)).revoked_at);
        Assert.Equal(pending, keyring.Current.Active!.Kid);
        Assert.NotNull((await StoredAsync(db, pending)).private_key_enc);
        Assert.NotNull(keyring.Current.Active.Private);
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Reloads_decrypt_only_the_keys_that_may_sign_not_every_retired_key(string engine)
    {
        // Every reload (each 2 s on every replica) decrypted and imported the private key of each retired key, although a
        // retired key never signs again: with daily rotations, hundreds of private keys held and decrypted over and over.
        var (keyring, _, db) = await NewKeyringAsync(engine);
        await using var _ = db;
        var ct = TestContext.Current.CancellationToken;
        for (var i = 0; i < 5; i++)
        {
            await keyring.RotateAsync(TimeSpan.Zero, ct);
        }

        var pending = await keyring.RotateAsync(TimeSpan.FromHours(1), ct);
        var retired = keyring.Current.All.Where(k => k.Status == KeyStatus.Retired).ToList();
        Assert.Equal(5, retired.Count);
        Assert.All(retired, k => Assert.Null(k.Private));
        Assert.NotNull(keyring.Current.Active!.Private);
        Assert.NotNull(keyring.Current.All.Single(k => k.Kid == pending).Private);

        // A reload does not even read a retired key's ciphertext: an undecryptable one leaves the keyring working.
        await using (var connection = await db.OpenAsync(ct))
        {
            await Dapper.SqlMapper.ExecuteAsync(connection, "UPDATE signing_keys SET private_key_enc = 'v1.AAAA' WHERE status = 'retired'");
        }

        await keyring.ReloadAsync(ct);
        Assert.Equal(5, keyring.Current.All.Count(k => k.Status == KeyStatus.Retired));
        Assert.Equal(7, keyring.Current.Published.Count);
        var token = TokenIssuer.Mint(keyring.Current.Active!, "arrakis", "arrakis", new Dictionary<string, object>(), TimeSpan.FromMinutes(5), DateTimeOffset.UtcNow);
        Assert.Equal(3, token.Split('.').Length);
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_retired_key_loses_its_stored_private_key_when_it_leaves_the_jwks_and_the_jwks_is_unchanged_until_then(string engine)
    {
        var (keyring, time, db) = await NewKeyringAsync(engine);
        await using var _ = db;
        var ct = TestContext.Current.CancellationToken;
        var first = keyring.Current.Active!;
        var second = await keyring.RotateAsync(TimeSpan.Zero, ct);
        var retention = keyring.Options.RetiredKeyRetention;
        var jwks = System.Text.Json.JsonSerializer.Serialize(JwksApi.Document(keyring.Current));
        Assert.Equal(
            System.Text.Json.JsonSerializer.Serialize(new JwksDocument([
                .. new[] { keyring.Current.Active!, first }.Select(k => new JsonWebKeyDto("EC", "P-256", k.X, k.Y, k.Kid, "sig", "ES256"))])),
            jwks);

        // Still published: the JWKS is the same document, and the row keeps its (unused) private key until it leaves.
        time.Advance(retention - TimeSpan.FromSeconds(1));
        await keyring.ReloadAsync(ct);
        Assert.Equal(jwks, System.Text.Json.JsonSerializer.Serialize(JwksApi.Document(keyring.Current)));
        Assert.NotNull((await StoredAsync(db, first.Kid)).private_key_enc);

        time.Advance(TimeSpan.FromSeconds(2));
        await keyring.ReloadAsync(ct);
        var row = await StoredAsync(db, first.Kid);
        Assert.Equal("retired", row.status);
        Assert.Null(row.private_key_enc);
        Assert.Equal((first.X, first.Y), (row.public_x, row.public_y));
        Assert.NotNull(row.retired_at);
        Assert.Equal([second], keyring.Current.Published.Select(k => k.Kid));
        Assert.Contains(keyring.Current.All, k => k.Kid == first.Kid && k.Status == KeyStatus.Retired);
        Assert.NotNull((await StoredAsync(db, second)).private_key_enc);

        // The next retired key too, once it has left the JWKS in turn.
        var third = await keyring.RotateAsync(TimeSpan.Zero, ct);
        time.Advance(retention - TimeSpan.FromSeconds(1));
        await keyring.ReloadAsync(ct);
        Assert.NotNull((await StoredAsync(db, second)).private_key_enc);
        time.Advance(TimeSpan.FromSeconds(2));
        await keyring.ReloadAsync(ct);
        Assert.Null((await StoredAsync(db, second)).private_key_enc);
        Assert.NotNull((await StoredAsync(db, third)).private_key_enc);
        Assert.Equal([third], keyring.Current.Published.Select(k => k.Kid));
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Upgrading_a_keyring_destroys_the_private_keys_of_revoked_keys_and_keeps_the_others(string engine)
    {
        var db = new Database(TestStorage.Options(engine, "freeside"));
        await using var _ = db;
        var ct = TestContext.Current.CancellationToken;
        var all = Migrator.FromAssembly(typeof(Database).Assembly, db.Engine);
        await new Migrator(db).ApplyAsync(all.Where(m => m.Id == "shared.001_keyring"), ct);
        var store = new KeyStore(db, new KeyProtector(new byte[32]));
        var now = DateTimeOffset.UtcNow;
        using var a = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        using var b = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        using var c = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        await store.InsertAsync("a", a, KeyStatus.Active, now, null, ct);
        await store.InsertAsync("b", b, KeyStatus.Pending, now, null, ct);
        await store.ActivateAsync("b", now, ct);
        await store.InsertAsync("c", c, KeyStatus.Pending, now, null, ct);
        await using (var connection = await db.OpenAsync(ct))
        {
            // As the old code revoked: the status changed, the encrypted private key stayed.
            await Dapper.SqlMapper.ExecuteAsync(connection, "UPDATE signing_keys SET status = 'revoked', revoked_at = 1 WHERE kid = 'c'");
        }

        await new Migrator(db).ApplyAsync(all, ct);

        Assert.Null((await StoredAsync(db, "c")).private_key_enc);
        Assert.Equal(SigningKey.PublicPoint(c), ((await StoredAsync(db, "c")).public_x, (await StoredAsync(db, "c")).public_y));
        Assert.NotNull((await StoredAsync(db, "a")).private_key_enc);
        var active = (await store.ListAsync(ct)).Single(k => k.Status == KeyStatus.Active);
        Assert.Equal("b", active.Kid);
        Assert.Equal(SigningKey.PublicPoint(b), SigningKey.PublicPoint(active.Private!));
        await using (var connection = await db.OpenAsync(ct))
        {
            // Still one active key at most, and a key that may sign must keep its private key.
            await Assert.ThrowsAnyAsync<System.Data.Common.DbException>(() =>
                Dapper.SqlMapper.ExecuteAsync(connection, "UPDATE signing_keys SET status = 'active' WHERE kid = 'a'"));
            await Assert.ThrowsAnyAsync<System.Data.Common.DbException>(() =>
                Dapper.SqlMapper.ExecuteAsync(connection, "UPDATE signing_keys SET private_key_enc = NULL WHERE kid = 'b'"));
        }
    }

    [Fact]
    public void New_kids_never_start_with_a_dash_which_a_command_line_reads_as_an_option()
    {
        var (dashed, kids) = (0, new List<string>());
        for (var i = 0; i < 2000; i++)
        {
            using var key = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
            var (x, y) = SigningKey.PublicPoint(key);
            var thumbprint = SigningKey.Thumbprint(x, y);
            dashed += thumbprint.StartsWith('-') ? 1 : 0;
            var kid = Keyring.NewKid(key);
            Assert.Equal(16, kid.Length);
            Assert.Contains(kid, thumbprint, StringComparison.Ordinal);
            kids.Add(kid);
        }

        Assert.True(dashed > 0, "no thumbprint began with '-' in 2000 keys (about 31 expected)");
        Assert.DoesNotContain(kids, k => k.StartsWith('-'));
    }

    [Fact]
    public async Task Private_keys_are_encrypted_at_rest_and_unreadable_with_another_master_key()
    {
        var (keyring, _, db) = await NewKeyringAsync("sqlite");
        await using var _ = db;
        await using var connection = await db.OpenAsync(TestContext.Current.CancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT private_key_enc FROM signing_keys";
        var stored = (string)(await command.ExecuteScalarAsync(TestContext.Current.CancellationToken))!;
        var pkcs8 = keyring.Current.Active!.Private!.ExportPkcs8PrivateKey();

        Assert.StartsWith("v1.", stored, StringComparison.Ordinal);
        Assert.DoesNotContain(Convert.ToBase64String(pkcs8), stored, StringComparison.Ordinal);
        var other = new KeyStore(db, new KeyProtector(Enumerable.Repeat((byte)7, 32).ToArray()));
        await Assert.ThrowsAnyAsync<System.Security.Cryptography.CryptographicException>(() => other.ListAsync(TestContext.Current.CancellationToken));
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_revoked_key_cannot_be_imported_again_under_any_kid(string engine)
    {
        var (keyring, _, db) = await NewKeyringAsync(engine);
        await using var _ = db;
        using var leaked = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        var pem = leaked.ExportPkcs8PrivateKeyPem();
        var kid = await keyring.ImportAsync(pem, ct: TestContext.Current.CancellationToken);
        await keyring.RevokeAsync(kid, TestContext.Current.CancellationToken);
        var active = keyring.Current.Active!.Kid;

        // The old message said "pass a different --kid", and doing so made the revoked (leaked) key sign again.
        var same = await Assert.ThrowsAsync<InvalidOperationException>(() => keyring.ImportAsync(pem, ct: TestContext.Current.CancellationToken));
        var other = await Assert.ThrowsAsync<InvalidOperationException>(() => keyring.ImportAsync(pem, "fresh-kid", TestContext.Current.CancellationToken));

        Assert.Contains("revoked", same.Message, StringComparison.Ordinal);
        Assert.Contains($"was revoked as '{kid}'", other.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("different --kid", other.Message, StringComparison.Ordinal);
        await keyring.ReloadAsync(TestContext.Current.CancellationToken);
        Assert.Equal(active, keyring.Current.Active!.Kid);
        Assert.DoesNotContain(keyring.Current.All, k => k.Kid == "fresh-kid");
        Assert.DoesNotContain(keyring.Current.Published, k => k.X == SigningKey.PublicPoint(leaked).X);
    }

    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Importing_another_key_under_the_active_kid_is_refused_not_reported_as_imported(string engine)
    {
        var (keyring, _, db) = await NewKeyringAsync(engine);
        await using var _ = db;
        using var first = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        using var second = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        Assert.Equal("ops", await keyring.ImportAsync(first.ExportPkcs8PrivateKeyPem(), "ops", TestContext.Current.CancellationToken));

        // The same PEM again is a no-op; a new PEM under the active key's kid was answered "IMPORTED kid=ops status=active"
        // while the old key went on signing, and tokens signed with the new PEM were refused.
        Assert.Equal("ops", await keyring.ImportAsync(first.ExportPkcs8PrivateKeyPem(), "ops", TestContext.Current.CancellationToken));
        var ex = await Assert.ThrowsAsync<InvalidOperationException>(() => keyring.ImportAsync(second.ExportPkcs8PrivateKeyPem(), "ops", TestContext.Current.CancellationToken));

        Assert.Contains("'ops'", ex.Message, StringComparison.Ordinal);
        Assert.Contains("different --kid", ex.Message, StringComparison.Ordinal);
        Assert.Equal(SigningKey.PublicPoint(first), (keyring.Current.Active!.X, keyring.Current.Active.Y));
    }

    [Fact]
    public async Task A_master_key_that_is_not_the_one_that_encrypted_the_keyring_is_named_in_the_error()
    {
        var (_, _, db) = await NewKeyringAsync("sqlite");
        await using var _ = db;
        var other = new KeyStore(db, new KeyProtector(Enumerable.Repeat((byte)7, 32).ToArray()));

        var ex = await Assert.ThrowsAsync<KeyringMasterKeyException>(() => other.ListAsync(TestContext.Current.CancellationToken));

        Assert.Contains("Keyring:MasterKey", ex.Message, StringComparison.Ordinal);
        Assert.Contains("master.key", ex.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("not base64!", "not base64")]
    [InlineData("AAAA", "32 bytes")]
    public void A_malformed_configured_master_key_is_refused_with_how_to_fix_it(string value, string expected)
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["Keyring:MasterKey"] = value }).Build();

        var ex = Assert.Throws<KeyringMasterKeyException>(() => KeyProtector.FromConfiguration(configuration));

        Assert.Contains(expected, ex.Message, StringComparison.Ordinal);
        Assert.Contains("openssl rand -base64 32", ex.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----", "PKCS#8")]
    [InlineData("hello", "PKCS#8")]
    public void Import_rejects_other_formats_with_a_clear_message(string pem, string expected)
    {
        var ex = Assert.Throws<FormatException>(() => Keyring.ParsePem(pem));
        Assert.Contains(expected, ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Import_accepts_pkcs8_and_sec1_p256_and_rejects_p384()
    {
        using var key = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        using var a = Keyring.ParsePem(key.ExportPkcs8PrivateKeyPem());
        using var b = Keyring.ParsePem(key.ExportECPrivateKeyPem());
        Assert.Equal(key.ExportParameters(false).Q.X, b.ExportParameters(false).Q.X);
        using var p384 = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP384);
        Assert.Throws<FormatException>(() => Keyring.ParsePem(p384.ExportPkcs8PrivateKeyPem()));
        Assert.NotNull(a);
    }
}
