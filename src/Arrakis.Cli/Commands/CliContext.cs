using System.CommandLine;
using Arrakis.Shared.Storage;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging.Abstractions;

namespace Arrakis.Cli.Commands;

/// <summary>Configuration and storage access shared by the commands that work on a service's database directly.</summary>
internal static class CliContext
{
    public static readonly Option<string?> DataDir = new("--data-dir")
    {
        Description = "Data directory for SQLite files, the master key and staging.pem (default: $LOA_DATA_DIR or .loa/)",
    };

    public static IConfiguration Configuration(string? dataDir)
    {
        var builder = new ConfigurationBuilder().AddEnvironmentVariables();
        if (!string.IsNullOrWhiteSpace(dataDir))
        {
            builder.AddInMemoryCollection(new Dictionary<string, string?> { ["LOA_DATA_DIR"] = Path.GetFullPath(dataDir) });
        }

        return builder.Build();
    }

    public static async Task<Database> OpenMigratedAsync(IConfiguration configuration, string service, System.Reflection.Assembly serviceAssembly)
    {
        var db = new Database(StorageOptions.Resolve(configuration, service));
        var migrations = Migrator.FromAssembly(typeof(Database).Assembly, db.Engine).Concat(Migrator.FromAssembly(serviceAssembly, db.Engine));
        await new Migrator(db).ApplyAsync(migrations);
        return db;
    }

    public static async Task<(Database Db, Keyring Keyring)> OpenKeyringAsync(IConfiguration configuration, string service)
    {
        var assembly = service switch
        {
            "freeside" => typeof(Arrakis.Freeside.FreesideService).Assembly,
            "finn" => typeof(Arrakis.Finn.FinnService).Assembly,
            _ => throw new ArgumentException($"Unknown service '{service}'; keys exist for freeside and finn."),
        };
        var db = await OpenMigratedAsync(configuration, service, assembly);
        var options = configuration.GetSection("Keyring").Get<KeyringOptions>() ?? new KeyringOptions();
        if (service == "freeside")
        {
            options.AlsoVerifying(Arrakis.Freeside.Communities.CommunitiesSetup.MaxOperatorTokenLifetime); // as freeside publishes its retired keys
        }

        var keyring = new Keyring(new KeyStore(db, KeyProtector.FromConfiguration(configuration)), TimeProvider.System, options, NullLogger<Keyring>.Instance);
        await keyring.InitializeAsync();
        return (db, keyring);
    }
}
