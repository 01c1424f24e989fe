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

    /// <summary>
    /// CRLF, LF and a lone CR each end a line, however the vendor's bytes are split across reads: a CRLF whose LF comes in
    /// the next read is one line end, not two (which would dispatch an event early, or split one). A leading BOM is not
    /// part of the first field name.
    /// </summary>
    [Fact]
    public async Task Cr_lf_and_crlf_end_lines_wherever_the_reads_split_them()
    {
        var wire = Encoding.UTF8.GetBytes("\uFEFFdata: a\r\ndata: b\r\n\r\ndata: c\r\rdata: é\n\nevent: x\rdata: e\r\n\r\n");
        using var response = new HttpResponseMessage { Content = new StreamContent(new TrickleStream(wire)) };
        var events = new List<SseEvent>();
        await foreach (var e in VendorHttp.ReadEventsAsync(response, TestContext.Current.CancellationToken))
        {
            events.Add(e);
        }

        Assert.Equal([new SseEvent(null, "a\nb"), new SseEvent(null, "c"), new SseEvent(null, "é"), new SseEvent("x", "e")], events);
    }

    /// <summary>A body that arrives one byte per read, as a slow network may deliver it.</summary>
    sealed class TrickleStream(byte[] bytes) : MemoryStream(bytes)
    {
        public override int Read(byte[] buffer, int offset, int count) => base.Read(buffer, offset, Math.Min(count, 1));

        public override int Read(Span<byte> buffer) => base.Read(buffer[..Math.Min(buffer.Length, 1)]);

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
            base.ReadAsync(buffer[..Math.Min(buffer.Length, 1)], cancellationToken);

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            base.ReadAsync(buffer, offset, Math.Min(count, 1), cancellationToken);
    }
}
