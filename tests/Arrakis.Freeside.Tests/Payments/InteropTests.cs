using System.Text.Json.Nodes;

namespace Arrakis.Freeside.Tests.Payments;

/// <summary>The reference client @x402/fetch 2.27.0 pays our endpoint unmodified, in the v2 header form and the v1 body form.</summary>
public sealed class InteropTests
{
    [Theory]
    [InlineData("Direct", true)]
    [InlineData("Facilitator", true)]
    [InlineData("Direct", false)]
    public async Task Reference_client_pays_and_gets_200(string settler, bool advertiseV2)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync("sqlite", settler, ct, new Dictionary<string, string?> { ["X402:AdvertiseV2"] = advertiseV2.ToString() });
        var (code, stdout, stderr) = await NodeTool.RunAsync(AnvilChain.ToolsDir, ["client.mjs"], new Dictionary<string, string>
        {
            ["URL"] = rig.Host.InvokeUrl,
            ["PAYER_KEY"] = rig.PayerKey,
            ["BODY"] = """{"prompt":"interop","model":"cheap"}""",
            ["TOKEN"] = rig.Host.UserToken("community-interop"),
        }, ct);
        Assert.True(code == 0, stderr);
        var result = JsonNode.Parse(stdout.Trim().Split('\n')[^1])!.AsObject();
        Assert.True(result["status"]!.GetValue<int>() == 200, stdout);
        var payment = result["paymentResponse"]!.AsObject();
        Assert.True(payment["success"]!.GetValue<bool>());
        Assert.Equal(advertiseV2 ? "eip155:84532" : "base-sepolia", payment["network"]!.GetValue<string>());
        var note = result["body"]!["creditNote"]!.AsObject();
        Assert.Equal(payment["transaction"]!.GetValue<string>(), note["transaction"]!.GetValue<string>());
        var paid = await rig.Chain.BalanceAsync(rig.PayTo);
        Assert.True(paid > 0);
        Assert.Equal(paid - 400, note["amountMicro"]!.GetValue<long>());
        Assert.Single(rig.Host.Sink.Lots);
        Assert.Equal(1, rig.Host.Invocation.Calls);
    }
}
