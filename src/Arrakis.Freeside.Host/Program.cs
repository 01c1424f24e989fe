return await Arrakis.Shared.Hosting.ServiceMain.RunAsync("freeside", args, a => Arrakis.Freeside.FreesideService.CreateAsync(a));
