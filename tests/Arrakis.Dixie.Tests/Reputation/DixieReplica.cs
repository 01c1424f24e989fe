using System.Net.Http.Headers;
using System.Net.Http.Json;
using Arrakis.Shared.Storage;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Dixie.Tests.Reputation;

/// <summary>A second dixie on the platform's database and Redis key prefix, as a replica of one deployment runs.</summary>
internal static class DixieReplica
{
    /// <summary>Starts it on a free port, with <paramref name="redis"/> as its Redis; returns it and its URL.</summary>
    public static async Task<(WebApplication App, string Url)> StartAsync(Platform p, string redis, CancellationToken ct)
    {
        var storage = p.Dixie.Services.GetRequiredService<StorageOptions>();
        var url = $"http://127.0.0.1:{TestStorage.FreePort()}";
        var args = new Dictionary<string, string?>
        {
            ["urls"] = url,
            ["LOA_DATA_DIR"] = p.DataDir,
            ["ConnectionStrings:Dixie"] = storage.ConnectionString,
            ["Redis:Configuration"] = redis,
            ["Redis:KeyPrefix"] = p.RedisPrefix, // replicas of one deployment share its prefix
            ["Services:FreesideUrl"] = p.FreesideUrl,
            ["Services:FinnUrl"] = p.FinnUrl,
        }.SelectMany(kv => new[] { "--" + kv.Key, kv.Value! }).ToArray();
        var app = await DixieService.CreateAsync(args);
        await app.StartAsync(ct);
        return (app, url);
    }

    /// <summary>Posts an "excellent" rating of <paramref name="routingKey"/> through <paramref name="dixie"/> with a freeside service token.</summary>
    public static async Task PostEventAsync(Platform p, HttpClient dixie, string eventId, string routingKey, CancellationToken ct)
    {
        using var response = await SendEventAsync(p, dixie, eventId, routingKey, ct);
        response.EnsureSuccessStatusCode();
    }

    /// <summary>As <see cref="PostEventAsync"/>, returning the answer whatever it is.</summary>
    public static async Task<HttpResponseMessage> SendEventAsync(Platform p, HttpClient dixie, string eventId, string routingKey, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "api/reputation/events")
        {
            Content = JsonContent.Create(new { event_id = eventId, routing_key = routingKey, score = "excellent", source = "t", timestamp = 1_800_000_000_000 }),
        };
        request.Headers.Authorization = ServiceAuthorization(p);
        return await dixie.SendAsync(request, ct);
    }

    /// <summary>A freeside service token for dixie's service routes.</summary>
    public static AuthenticationHeaderValue ServiceAuthorization(Platform p) => new("Bearer",
        p.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", "loa-dixie", new Dictionary<string, object> { ["sub"] = "t" }));
}
