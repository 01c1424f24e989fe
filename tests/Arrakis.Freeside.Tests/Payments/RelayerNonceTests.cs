using System.Text;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Payments;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Hosting;

namespace Arrakis.Freeside.Tests.Payments;

/// <summary>
/// The direct settler's relayer account is shared by every freeside replica (one secret, several tasks): its transaction
/// nonces must not collide across replicas, or one settlement replaces or refuses the other.
/// </summary>
public sealed class RelayerNonceTests
{
    static readonly JsonObject Body = new() { ["prompt"] = "x402 payment test", ["model"] = "cheap" };

    /// <summary>
    /// Two replicas on one database and one relayer key settle two payments at the same moment; the RPC in front of the
    /// chain holds the relayer's nonce reads until both replicas asked (or a few seconds passed), as two tasks reading the
    /// account's next nonce at once do. Each payment must settle with its own mined transaction and one credit note.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Two_replicas_sharing_the_relayer_key_settle_two_payments_at_once(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        RelayerRpc? rpc = null;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct, rpcUrl: chain =>
        {
            rpc = RelayerRpc.Start(chain.RpcUrl, parties: 2, hold: TimeSpan.FromSeconds(3));
            return rpc.Url;
        });
        await using var rpcScope = rpc!;
        var config = rig.Host.App.Configuration;
        await using var replica = await PaymentHost.StartAsync(engine, new Dictionary<string, string?>
        {
            ["LOA_DATA_DIR"] = config["LOA_DATA_DIR"],
            ["ConnectionStrings:Freeside"] = config["ConnectionStrings:Freeside"],
            ["X402:PayTo"] = rig.PayTo,
            ["X402:RpcUrl"] = rpc!.Url,
            ["X402:Settler"] = "Direct",
            ["X402:RelayerKey"] = PaymentSigning.RelayerKey,
        });
        var (first, _, amount) = await ChainPaymentTests.SignAsync(rig, Body, ct);
        var (second, _, _) = await ChainPaymentTests.SignAsync(rig, Body, ct);

        var responses = await Task.WhenAll(
            PayAsync(rig.Host, first, "community-one"),
            PayAsync(replica, second, "community-two"));

        Assert.All(responses, r => Assert.True(r.Status == 200, r.Body.ToJsonString()));
        var transactions = responses.Select(r => r.Body["payment"]!["transaction"]!.GetValue<string>()).ToList();
        Assert.Equal(2, transactions.Distinct().Count());
        foreach (var tx in transactions)
        {
            Assert.Equal(1, (int)(await rig.Chain.ReceiptStatusAsync(tx)).Value);
        }

        // Both replicas read the relayer's nonce through the relay, and no send was refused for a taken nonce.
        Assert.True(rpc.NonceReads >= 2, $"{rpc.NonceReads} nonce reads went through the RPC");
        Assert.Equal(2, rpc.Sends);
        Assert.Equal(2 * amount, await rig.Chain.BalanceAsync(rig.PayTo));
        Assert.Equal(2, await rig.Host.Store.CountAsync(PaymentStates.Settled, ct));
        Assert.Equal("community-one", Assert.Single(rig.Host.Sink.Lots).Value.CommunityId);
        Assert.Equal("community-two", Assert.Single(replica.Sink.Lots).Value.CommunityId);

        async Task<(int Status, JsonObject Body)> PayAsync(PaymentHost host, string header, string community)
        {
            using var response = await host.PostAsync(Body, ChainPaymentTests.V2(header), host.UserToken(community), ct);
            return ((int)response.StatusCode, await ChainPaymentTests.JsonAsync(response, ct));
        }
    }

    /// <summary>
    /// The RPC node answers a relayer nonce that is already used (it is behind the node that took the last settlement, or
    /// a sender that does not take the lock used it): the node refuses the settlement as "nonce too low". That transaction
    /// can never be mined, so freeside signs the payment again with a fresh nonce and settles it, rather than failing a
    /// call that was served.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task A_settlement_refused_for_a_used_relayer_nonce_is_signed_again_and_settles(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        RelayerRpc? rpc = null;
        await using var rig = await ChainPaymentTests.StartAsync(engine, "Direct", ct, rpcUrl: chain =>
        {
            rpc = RelayerRpc.Start(chain.RpcUrl);
            return rpc.Url;
        });
        await using var rpcScope = rpc!;
        var (first, _, amount) = await ChainPaymentTests.SignAsync(rig, Body, ct);
        using (var settled = await rig.Host.PostAsync(Body, ChainPaymentTests.V2(first), rig.Host.UserToken("community-one"), ct))
        {
            Assert.Equal(200, (int)settled.StatusCode);
        }

        Assert.Equal(1, rpc!.Sends);
        rpc.LagNextNonceReads(1);
        var (second, a, _) = await ChainPaymentTests.SignAsync(rig, Body, ct);
        using var response = await rig.Host.PostAsync(Body, ChainPaymentTests.V2(second), rig.Host.UserToken("community-two"), ct);
        var body = await ChainPaymentTests.JsonAsync(response, ct);

        Assert.True(200 == (int)response.StatusCode, body.ToJsonString());
        Assert.Equal(3, rpc.Sends); // the refused send, then the one signed again
        var tx = body["payment"]!["transaction"]!.GetValue<string>();
        Assert.Equal(1, (int)(await rig.Chain.ReceiptStatusAsync(tx)).Value);
        Assert.True(await rig.Chain.AuthorizationUsedAsync(a.From, a.Nonce));
        Assert.Equal(2 * amount, await rig.Chain.BalanceAsync(rig.PayTo));
        var row = (await rig.Host.Store.FindByTxAsync(tx, ct))!;
        Assert.Equal(PaymentStates.Settled, row.State);
        Assert.Equal(tx, "0x" + Nethereum.Util.Sha3Keccack.Current.CalculateHashFromHex(row.RawTx!)); // recovery would rebroadcast this one
        Assert.Equal(2, rig.Host.Sink.Lots.Count);
    }
}

/// <summary>
/// A JSON-RPC relay in front of the chain. It holds the first <c>parties</c> <c>eth_getTransactionCount</c> calls until all
/// of them arrived or <c>hold</c> passed (the reads happen together, before any send), can answer the next reads one lower
/// than the chain (a node behind the one that took the last transaction), and counts the sends.
/// </summary>
internal sealed class RelayerRpc : IAsyncDisposable
{
    readonly WebApplication _app;
    readonly HttpClient _http = new();
    readonly TaskCompletionSource _all = new(TaskCreationOptions.RunContinuationsAsynchronously);
    int _reads;
    int _sends;
    int _stale;

    RelayerRpc(string target, int parties, TimeSpan hold)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls($"http://127.0.0.1:{TestStorage.FreePort()}");
        _app = builder.Build();
        _app.MapPost("/", async (HttpContext context) =>
        {
            var request = await new StreamReader(context.Request.Body).ReadToEndAsync(context.RequestAborted);
            var nonceRead = request.Contains("\"eth_getTransactionCount\"", StringComparison.Ordinal);
            var stale = false;
            if (nonceRead)
            {
                if (Interlocked.Increment(ref _reads) >= parties)
                {
                    _all.TrySetResult();
                }

                await Task.WhenAny(_all.Task, Task.Delay(hold, context.RequestAborted));
                stale = Interlocked.Decrement(ref _stale) >= 0;
            }
            else if (request.Contains("\"eth_sendRawTransaction\"", StringComparison.Ordinal))
            {
                Interlocked.Increment(ref _sends);
            }

            using var answer = await _http.PostAsync(target, new StringContent(request, Encoding.UTF8, "application/json"), context.RequestAborted);
            var text = await answer.Content.ReadAsStringAsync(context.RequestAborted);
            if (stale)
            {
                var json = JsonNode.Parse(text)!.AsObject();
                var count = Convert.ToInt64(json["result"]!.GetValue<string>(), 16);
                json["result"] = "0x" + Math.Max(0, count - 1).ToString("x", System.Globalization.CultureInfo.InvariantCulture);
                text = json.ToJsonString();
            }

            context.Response.ContentType = "application/json";
            await context.Response.WriteAsync(text, context.RequestAborted);
        });
    }

    public string Url => _app.Urls.First();

    public int NonceReads => Volatile.Read(ref _reads);

    public int Sends => Volatile.Read(ref _sends);

    /// <summary>Answers the next <paramref name="reads"/> nonce reads one lower than the chain does.</summary>
    public void LagNextNonceReads(int reads) => Volatile.Write(ref _stale, reads);

    public static RelayerRpc Start(string target, int parties = 0, TimeSpan hold = default)
    {
        var rpc = new RelayerRpc(target, parties, hold);
        rpc._app.Start();
        return rpc;
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
