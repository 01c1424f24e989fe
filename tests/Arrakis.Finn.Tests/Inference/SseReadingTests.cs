using System.Text;
using Arrakis.Finn.Inference.Providers;

namespace Arrakis.Finn.Tests.Inference;

/// <summary>Reading a vendor's SSE stream the way the SSE specification does.</summary>
public sealed class SseReadingTests
{
    static async Task<List<SseEvent>> ReadAsync(string wire)
    {
        using var response = new HttpResponseMessage { Content = new StringContent(wire, Encoding.UTF8, "text/event-stream") };
        var events = new List<SseEvent>();
        await foreach (var e in VendorHttp.ReadEventsAsync(response, TestContext.Current.CancellationToken))
        {
            events.Add(e);
        }

        return events;
    }

    /// <summary>
    /// An event with a name but no data line ("event: ping" and a blank line, as some OpenAI-compatible servers send
    /// while they think) is not an event: it used to be passed on with empty data, which the OpenAI adapter could not
    /// parse, failing the call as a malformed answer. Comments are skipped, and data lines join with newlines, an empty
    /// first line included.
    /// </summary>
    [Fact]
    public async Task Events_without_data_are_not_dispatched_and_data_lines_join_with_newlines()
    {
        var events = await ReadAsync(
            "event: ping\n\n" +
            ": OPENROUTER PROCESSING\n\n" +
            "data: {\"a\":1}\n\n" +
            "event: message_delta\ndata: x\ndata: y\n\n" +
            "data:\ndata: second\n\n" +
            "data: [DONE]");

        Assert.Equal(
            [new SseEvent(null, "{\"a\":1}"), new SseEvent("message_delta", "x\ny"), new SseEvent(null, "\nsecond"), new SseEvent(null, "[DONE]")],
            events);
    }
}
