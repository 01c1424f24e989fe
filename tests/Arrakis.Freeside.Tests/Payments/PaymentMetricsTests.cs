using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Text.Json.Nodes;
using Arrakis.Freeside.Payments;
using Microsoft.Extensions.DependencyInjection;

namespace Arrakis.Freeside.Tests.Payments;

/// <summary>Meter Arrakis.Payments counts PaymentCreated, PaymentFinished, PaymentFailed and CreditsMinted.</summary>
public sealed class PaymentMetricsTests
{
    [Fact]
    public async Task A_paid_and_a_failed_payment_are_counted()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var rig = await ChainPaymentTests.StartAsync("sqlite", "Direct", ct);
        var factory = rig.Host.App.Services.GetRequiredService<IMeterFactory>();
        var totals = new ConcurrentDictionary<string, long>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == PaymentMetrics.MeterName && ReferenceEquals(instrument.Meter.Scope, factory))
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, _, _) => totals.AddOrUpdate(instrument.Name, value, (_, v) => v + value));
        listener.Start();

        foreach (var prompt in new[] { "metered", "provider-error" })
        {
            var body = new JsonObject { ["prompt"] = prompt, ["model"] = "cheap" };
            var (required, _) = await rig.Host.ChallengeAsync(body, ct);
            var accepted = required["accepts"]![0]!.AsObject();
            var a = PaymentSigning.Authorization(rig.PayerKey, rig.PayTo, long.Parse(accepted["amount"]!.GetValue<string>()), 0, DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 60);
            var header = PaymentSigning.Header(PaymentSigning.V2Payload(accepted, a, PaymentSigning.Sign(rig.Host.Options, a, rig.PayerKey)));
            using var _ = await rig.Host.PostAsync(body, new Dictionary<string, string> { ["PAYMENT-SIGNATURE"] = header }, rig.Host.UserToken("community-m"), ct);
        }

        var minted = Assert.Single(rig.Host.Sink.Lots).Value.AmountMicro;
        Assert.Equal(2, totals.GetValueOrDefault("PaymentCreated"));
        Assert.Equal(1, totals.GetValueOrDefault("PaymentFinished"));
        Assert.Equal(1, totals.GetValueOrDefault("PaymentFailed"));
        Assert.Equal(minted, totals.GetValueOrDefault("CreditsMinted"));
    }
}
