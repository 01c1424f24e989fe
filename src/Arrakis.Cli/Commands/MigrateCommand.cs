using System.CommandLine;

namespace Arrakis.Cli.Commands;

internal static class MigrateCommand
{
    public static Command Create()
    {
        var command = new Command("migrate", "Apply pending database migrations for freeside, finn and dixie (SQLite, or PostgreSQL when ConnectionStrings__<Service> is set).")
        {
            CliContext.DataDir,
        };
        command.SetAction(async (parse, ct) =>
        {
            var config = CliContext.Configuration(parse.GetValue(CliContext.DataDir));
            foreach (var (service, assembly) in new[]
            {
                ("freeside", typeof(Arrakis.Freeside.FreesideService).Assembly),
                ("finn", typeof(Arrakis.Finn.FinnService).Assembly),
                ("dixie", typeof(Arrakis.Dixie.DixieService).Assembly),
            })
            {
                await using var db = await CliContext.OpenMigratedAsync(config, service, assembly);
                Console.WriteLine($"{service}: migrated ({db.Engine.ToString().ToLowerInvariant()})");
            }

            return 0;
        });
        return command;
    }
}
