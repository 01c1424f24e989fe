using System.CommandLine;
using Arrakis.Cli.Commands;

var root = new RootCommand("loa: run, seed, gate and operate the Arrakis agent platform (freeside, finn, dixie).")
{
    UpCommand.Create(),
    MigrateCommand.Create(),
    KeysCommand.Create(),
    JwtCommand.Create(),
    GateCommand.Create(),
    BalanceCommand.Create(),
    SeedCommand.Create(),
    SeedCommand.CreateAudit(),
    DeployCommand.Create(),
};
return await root.Parse(args).InvokeAsync();
