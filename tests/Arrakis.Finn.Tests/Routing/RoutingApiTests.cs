using System.Net.Http.Headers;
using System.Text;
using Arrakis.Finn.Routing;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Finn.Tests.Routing;

public sealed class RoutingApiTests
{
    /// <summary>A mode that is not valid text (reading it threw: 500) or given twice is 400 naming it, and the mode stays.</summary>
    [Fact]
    public async Task Invalid_text_or_a_repeated_mode_is_400_and_the_mode_is_unchanged()
    {
        await using var p = await Platform.StartAsync(settings: new Dictionary<string, string?> { ["Routing:Mode"] = "disabled" });
        var ct = TestContext.Current.CancellationToken;
        using var finn = new HttpClient { BaseAddress = new Uri(p.FinnUrl + "/") };
        var cases = new (string Field, byte[] Body)[]
        {
            ("mode", Encoding.UTF8.GetBytes("""{"mode":"enabled\ud800"}""")),
            ("mode", [.. "{\"mode\":\"shadow"u8, 0xff, .. "\"}"u8]),
            ("mode", Encoding.UTF8.GetBytes("""{"mode":"disabled","mode":"enabled"}""")),
        };
        var wrong = new List<string>();
        foreach (var (field, body) in cases)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "api/v1/routing/mode")
            {
                Content = new ByteArrayContent(body) { Headers = { ContentType = new MediaTypeHeaderValue("application/json") } },
            };
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer",
                p.Freeside.Services.GetRequiredService<TokenIssuer>().Mint("arrakis", "loa-finn", new Dictionary<string, object> { ["sub"] = "admin" }));
            using var r = await finn.SendAsync(request, ct);
            if (ProblemBodies.Mismatch(r.StatusCode, await r.Content.ReadAsStringAsync(ct), field) is { } miss)
            {
                wrong.Add(miss);
            }
        }

        Assert.True(wrong.Count == 0, string.Join("; ", wrong));

        Assert.Equal(RoutingMode.Disabled, p.Finn.Services.GetRequiredService<RoutingModeSwitch>().Current);
    }
}
