return await Arrakis.Shared.Hosting.ServiceMain.RunAsync("finn", args, a => Arrakis.Finn.FinnService.CreateAsync(a));
