var app = await Arrakis.Finn.FinnService.CreateAsync(args);
await app.RunAsync();
