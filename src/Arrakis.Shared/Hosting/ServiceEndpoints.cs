using Microsoft.AspNetCore.Hosting;

namespace Arrakis.Shared.Hosting;

/// <summary>Where the three services listen by default and how they find each other.</summary>
public static class ServiceEndpoints
{
    public const int FreesidePort = 3000;
    public const int DixiePort = 3001;
    public const int FinnPort = 3002;

    public static string FreesideUrl(IConfiguration c) => Url(c, "Services:FreesideUrl", FreesidePort);

    public static string DixieUrl(IConfiguration c) => Url(c, "Services:DixieUrl", DixiePort);

    public static string FinnUrl(IConfiguration c) => Url(c, "Services:FinnUrl", FinnPort);

    static string Url(IConfiguration c, string key, int port) => (c[key] ?? $"http://127.0.0.1:{port}").TrimEnd('/');

    /// <summary>Listens on the configured <c>Urls</c>, or on 127.0.0.1 with the service's default port.</summary>
    public static void Listen(Microsoft.AspNetCore.Builder.WebApplicationBuilder builder, int defaultPort)
    {
        if (string.IsNullOrWhiteSpace(builder.Configuration["Urls"]) && string.IsNullOrWhiteSpace(builder.Configuration["ASPNETCORE_URLS"]))
        {
            builder.WebHost.UseUrls($"http://127.0.0.1:{defaultPort}");
        }
    }
}
