using System.CommandLine;
using Arrakis.Shared.Tokens;

namespace Arrakis.Cli.Commands;

/// <summary><c>loa keys list|rotate|revoke|import --service freeside|finn</c>: operate a service's signing keyring.</summary>
internal static class KeysCommand
{
    static Option<string> ServiceOption() => new("--service")
    {
        Description = "Which keyring: freeside or finn",
        DefaultValueFactory = _ => "freeside",
    };

    public static Command Create()
    {
        var keys = new Command("keys", "Manage the ES256 signing keyrings (replicas pick changes up within 5 s).");
        keys.Subcommands.Add(List());
        keys.Subcommands.Add(Rotate());
        keys.Subcommands.Add(Revoke());
        keys.Subcommands.Add(Import());
        return keys;
    }

    static Command List()
    {
        var service = ServiceOption();
        var command = new Command("list", "List keys with their status.") { service, CliContext.DataDir };
        command.SetAction(async (parse, ct) => await RunAsync(parse, service, async keyring =>
        {
            Console.WriteLine($"{"KID",-18} {"STATUS",-8} {"CREATED",-20} {"PROMOTE_AT",-20} PUBLISHED");
            var published = keyring.Current.Published.Select(k => k.Kid).ToHashSet();
            foreach (var k in keyring.Current.All)
            {
                Console.WriteLine($"{k.Kid,-18} {k.Status.ToString().ToLowerInvariant(),-8} {k.CreatedAt:yyyy-MM-ddTHH:mm:ssZ} {(k.PromoteAt is { } p ? p.ToString("yyyy-MM-ddTHH:mm:ssZ") : "-"),-20} {(published.Contains(k.Kid) ? "yes" : "no")}");
            }

            await Task.CompletedTask;
            return 0;
        }));
        return command;
    }

    static Command Rotate()
    {
        var service = ServiceOption();
        var delay = new Option<int?>("--propagation-seconds")
        {
            Description = "Seconds the new key is published before it signs (default 60: twice the JWKS max-age). 0 switches at once.",
        };
        var command = new Command("rotate", "Publish a new pending key; it becomes active after the propagation delay.") { service, delay, CliContext.DataDir };
        command.SetAction(async (parse, ct) => await RunAsync(parse, service, async keyring =>
        {
            var seconds = parse.GetValue(delay);
            if (seconds is < 0 or > 86_400)
            {
                // The services refuse a Keyring:PropagationDelay above 24 h; a typo here would leave the key pending for years.
                Console.Error.WriteLine("error: --propagation-seconds must be from 0 to 86400 (24 hours)");
                return 2;
            }

            var wait = seconds is { } s ? TimeSpan.FromSeconds(s) : keyring.Options.PropagationDelay;
            var kid = await keyring.RotateAsync(wait, ct);
            Console.WriteLine(wait <= TimeSpan.Zero
                ? $"ROTATED kid={kid} status=active"
                : $"ROTATED kid={kid} status=pending promote_at={DateTimeOffset.UtcNow + wait:yyyy-MM-ddTHH:mm:ssZ}");
            return 0;
        }));
        return command;
    }

    static Command Revoke()
    {
        var service = ServiceOption();
        var kid = new Argument<string>("kid") { Description = "The kid to revoke" };
        var command = new Command("revoke", "Emergency revocation: remove a key from the JWKS at once; verifiers drop it within 60 s.") { service, kid, CliContext.DataDir };
        command.SetAction(async (parse, ct) => await RunAsync(parse, service, async keyring =>
        {
            var id = parse.GetValue(kid)!;
            var previous = await keyring.RevokeAsync(id, ct);
            if (previous is null)
            {
                Console.Error.WriteLine($"error: no key with kid '{id}' (see 'loa keys list --service {parse.GetValue(service)}')");
                return 1;
            }

            Console.WriteLine($"REVOKED kid={id} previous_status={previous.ToString()!.ToLowerInvariant()} active={keyring.Current.Active?.Kid}");
            return 0;
        }));
        return command;
    }

    static Command Import()
    {
        var service = ServiceOption();
        var pem = new Option<FileInfo>("--pem") { Description = "PKCS#8 or SEC1 PEM file with a P-256 private key", Required = true };
        var kid = new Option<string?>("--kid") { Description = "Key id to publish (default: RFC 7638 thumbprint prefix)" };
        var command = new Command("import", "Make an operator's P-256 PEM key the active signing key.") { service, pem, kid, CliContext.DataDir };
        command.SetAction(async (parse, ct) => await RunAsync(parse, service, async keyring =>
        {
            if (parse.GetValue(kid) is { } id && (id.Length is 0 or > 128 || id.Any(c => c is <= ' ' or > '~')))
            {
                // An empty kid (--kid "$KID" with KID unset) was imported as the active signing key under the kid "";
                // a space or newline split the key's row in 'keys list' and every log line naming it.
                Console.Error.WriteLine("error: --kid must be 1-128 printable ASCII characters without spaces (or leave it out for the key's thumbprint)");
                return 2;
            }

            var file = parse.GetValue(pem)!;
            if (!file.Exists)
            {
                Console.Error.WriteLine($"error: {file.FullName} does not exist");
                return 1;
            }

            try
            {
                var imported = await keyring.ImportAsync(await File.ReadAllTextAsync(file.FullName, ct), parse.GetValue(kid), ct);
                Console.WriteLine($"IMPORTED kid={imported} status=active");
                return 0;
            }
            catch (Exception ex) when (ex is FormatException or InvalidOperationException)
            {
                Console.Error.WriteLine("error: " + ex.Message);
                return 1;
            }
        }));
        return command;
    }

    static async Task<int> RunAsync(ParseResult parse, Option<string> service, Func<Keyring, Task<int>> action)
    {
        var name = parse.GetValue(service)!.ToLowerInvariant();
        if (name is not ("freeside" or "finn"))
        {
            Console.Error.WriteLine($"error: --service must be freeside or finn, not '{name}'");
            return 2;
        }

        var (db, keyring) = await CliContext.OpenKeyringAsync(CliContext.Configuration(parse.GetValue(CliContext.DataDir)), name);
        await using (db)
        {
            return await action(keyring);
        }
    }
}
