using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Payments;
using Arrakis.Shared.Storage;
using Arrakis.Shared.Tokens;
using Dapper;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Arrakis.Freeside.Tests.Payments;

/// <summary>A real freeside (real database, real HTTP on a free loopback port) with the payment test doubles registered.</summary>
internal sealed class PaymentHost : IAsyncDisposable
{
    PaymentHost(WebApplication app, string url, FixedCostInvocation invocation, RecordingCreditSink sink, RecordingLoggerProvider logs)
    {
        Logs = logs;
        App = app;
        Url = url;
        Invocation = invocation;
        Sink = sink;
        Http = new HttpClient { BaseAddress = new Uri(url), Timeout = TimeSpan.FromSeconds(120) };
    }

    public WebApplication App { get; }

    public string Url { get; }

    public string InvokeUrl => Url + PaymentsApi.InvokePath;

    public FixedCostInvocation Invocation { get; }

    public RecordingCreditSink Sink { get; }

    public HttpClient Http { get; }

    /// <summary>Every log entry the host wrote.</summary>
    public RecordingLoggerProvider Logs { get; }

    public X402Options Options => App.Services.GetRequiredService<IOptions<X402Options>>().Value;

    public PaymentStore Store => App.Services.GetRequiredService<PaymentStore>();

    public static Task<PaymentHost> StartAsync(string engine, IDictionary<string, string?> settings, long costMicro = 400) =>
        TestStorage.RetryOnPortClashAsync(() => StartOnceAsync(engine, settings, costMicro));

    static async Task<PaymentHost> StartOnceAsync(string engine, IDictionary<string, string?> settings, long costMicro)
    {
        var url = $"http://127.0.0.1:{TestStorage.FreePort()}";
        var all = new Dictionary<string, string?>(TestStorage.FreshConfig(engine, "freeside")) { ["urls"] = url };
        foreach (var (k, v) in settings)
        {
            all[k] = v;
        }

        var invocation = new FixedCostInvocation(costMicro);
        var sink = new RecordingCreditSink();
        var logs = new RecordingLoggerProvider();
        var args = all.Where(kv => kv.Value is not null).SelectMany(kv => new[] { "--" + kv.Key, kv.Value! }).ToArray();
        var app = await FreesideService.CreateAsync(args, b =>
        {
            b.Logging.AddProvider(logs);
            b.Services.AddSingleton<IPaidInvocation>(invocation);
            b.Services.AddSingleton<ICreditNoteSink>(sink);
            // These payment-flow tests credit whatever community the token names; the ledger-backed resolver is tested with invoke.
            b.Services.AddSingleton<IPayerCommunityResolver, ClaimCommunityResolver>();
            // Recovery tests run their passes themselves (RecoverOnceAsync on rows they aged). The background loop's
            // start-up pass, late on a busy machine, listed those rows too and took one first, so the test's pass skipped
            // it as another replica's and the test saw it unrecovered. SettlementRecovery stays registered for them.
            var background = b.Services.Single(d => d.ServiceType == typeof(Microsoft.Extensions.Hosting.IHostedService)
                && d.ImplementationFactory?.Method.ReturnType == typeof(SettlementRecovery));
            b.Services.Remove(background);
        });
        await app.StartAsync();
        return new PaymentHost(app, url, invocation, sink, logs);
    }

    public SettlementRecovery Recovery => App.Services.GetRequiredService<SettlementRecovery>();

    /// <summary>Moves a payment's timestamps back by <paramref name="by"/>, as if it had been left that long: recovery tests age rows instead of waiting.</summary>
    public async Task AgeAsync(string paymentId, TimeSpan by, CancellationToken ct)
    {
        await using var connection = await App.Services.GetRequiredService<Database>().OpenAsync(ct);
        var aged = await connection.ExecuteAsync(new CommandDefinition("UPDATE x402_payments SET created_at = created_at - @ms, updated_at = updated_at - @ms WHERE id = @paymentId",
            new { ms = (long)by.TotalMilliseconds, paymentId }, cancellationToken: ct));
        Assert.Equal(1, aged);
    }

    public string UserToken(string communityId) =>
        App.Services.GetRequiredService<TokenIssuer>().Mint(FreesideService.Issuer, FreesideService.Issuer, new Dictionary<string, object>
        {
            ["tenant_id"] = "test-tenant",
            ["community_id"] = communityId,
            ["sub"] = "payer-test",
        });

    public async Task<HttpResponseMessage> PostAsync(JsonObject body, IDictionary<string, string>? headers = null, string? token = null, CancellationToken ct = default)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, PaymentsApi.InvokePath)
        {
            Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"),
        };
        foreach (var (k, v) in headers ?? new Dictionary<string, string>())
        {
            request.Headers.TryAddWithoutValidation(k, v);
        }

        if (token is not null)
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        }

        return await Http.SendAsync(request, ct);
    }

    /// <summary>Gets the 402 for <paramref name="body"/> and returns the decoded v2 PaymentRequired.</summary>
    public async Task<(JsonObject PaymentRequired, JsonObject V1Body)> ChallengeAsync(JsonObject body, CancellationToken ct)
    {
        using var response = await PostAsync(body, ct: ct);
        Assert.Equal(402, (int)response.StatusCode);
        var header = response.Headers.GetValues(X402Headers.PaymentRequired).Single();
        var v1 = JsonNode.Parse(await response.Content.ReadAsStringAsync(ct))!.AsObject();
        return (X402Codec.DecodeNode(header)!.AsObject(), v1);
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await App.StopAsync();
        await App.DisposeAsync();
    }
}
