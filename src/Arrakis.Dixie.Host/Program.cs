var app = await Arrakis.Dixie.DixieService.CreateAsync(args);
await app.RunAsync();
