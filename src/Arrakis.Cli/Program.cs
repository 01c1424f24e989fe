return await Arrakis.Cli.LoaProgram.RunAsync(args);
