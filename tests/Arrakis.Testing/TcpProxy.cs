using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;

namespace Arrakis.Testing;

/// <summary>
/// A loopback TCP forwarder that can cut every connection, to make a real database unreachable for a service, or freeze
/// them (open, but nothing passes), as a hung process or a black-holed network does.
/// </summary>
public sealed class TcpProxy : IAsyncDisposable
{
    readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    readonly string _upstreamHost;
    readonly int _upstreamPort;
    readonly ConcurrentDictionary<TcpClient, byte> _open = new();
    readonly CancellationTokenSource _stop = new();
    volatile bool _down;
    volatile bool _frozen;

    public TcpProxy(string upstreamHost, int upstreamPort)
    {
        _upstreamHost = upstreamHost;
        _upstreamPort = upstreamPort;
        _listener.Start();
        _ = AcceptLoopAsync();
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    /// <summary>
    /// A connection string to a fresh schema (<paramref name="schemaPrefix"/> and a random suffix) of the test PostgreSQL,
    /// through a proxy the test can cut or freeze.
    /// </summary>
    public static (Npgsql.NpgsqlConnectionStringBuilder Pg, TcpProxy Proxy) ToTestPostgres(string schemaPrefix)
    {
        var pg = new Npgsql.NpgsqlConnectionStringBuilder(TestStorage.RequirePostgres());
        var proxy = new TcpProxy(pg.Host!, pg.Port);
        pg.Host = "127.0.0.1";
        pg.Port = proxy.Port;
        pg.SearchPath = TestStorage.TrackSchema(schemaPrefix + Guid.NewGuid().ToString("N")[..12]);
        return (pg, proxy);
    }

    /// <summary>Drops every open connection and refuses new ones until <see cref="Restore"/>.</summary>
    public void Cut()
    {
        _down = true;
        foreach (var client in _open.Keys)
        {
            client.Dispose();
        }

        _open.Clear();
    }

    public void Restore() => _down = false;

    /// <summary>Keeps every connection open but forwards no more bytes: no data, no FIN, no reset.</summary>
    public void Freeze() => _frozen = true;

    /// <summary>Lets the frozen connections (and the bytes they held) through again.</summary>
    public void Thaw() => _frozen = false;

    async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            TcpClient client;
            try
            {
                client = await _listener.AcceptTcpClientAsync(_stop.Token);
            }
            catch (Exception) when (_stop.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException)
            {
                continue;
            }

            if (_down)
            {
                client.Dispose();
                continue;
            }

            _ = PipeAsync(client);
        }
    }

    async Task PipeAsync(TcpClient client)
    {
        using var upstream = new TcpClient();
        try
        {
            await upstream.ConnectAsync(_upstreamHost, _upstreamPort, _stop.Token);
            _open[client] = 0;
            _open[upstream] = 0;
            var a = CopyAsync(client.GetStream(), upstream.GetStream());
            var b = CopyAsync(upstream.GetStream(), client.GetStream());
            await Task.WhenAny(a, b);
        }
        catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
        }
        finally
        {
            _open.TryRemove(client, out _);
            _open.TryRemove(upstream, out _);
            client.Dispose();
        }
    }

    async Task CopyAsync(Stream from, Stream to)
    {
        var buffer = new byte[16 * 1024];
        int read;
        while ((read = await from.ReadAsync(buffer, _stop.Token)) > 0)
        {
            while (_frozen)
            {
                await Task.Delay(50, _stop.Token);
            }

            await to.WriteAsync(buffer.AsMemory(0, read), _stop.Token);
        }
    }

    public ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _listener.Stop();
        Cut();
        _stop.Dispose();
        return ValueTask.CompletedTask;
    }
}
