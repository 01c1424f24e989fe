return await Arrakis.Shared.Hosting.ServiceMain.RunAsync("dixie", args, a => Arrakis.Dixie.DixieService.CreateAsync(a));
