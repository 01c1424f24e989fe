var app = await Arrakis.Freeside.FreesideService.CreateAsync(args);
await app.RunAsync();
