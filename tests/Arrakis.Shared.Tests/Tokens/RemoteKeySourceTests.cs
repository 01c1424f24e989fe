using System.Net;
using System.Security.Cryptography;
using System.Text;
using Arrakis.Shared.Tokens;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;

namespace Arrakis.Shared.Tests.Tokens;

public sealed class RemoteKeySourceTests
{
    readonly FakeTimeProvider _time = new(DateTimeOffset.UtcNow);

    /// <summary>Serves whatever <see cref="Body"/> says, counting requests; <see cref="Hold"/> keeps the next answer back.</summary>
    sealed class FakeJwks : HttpMessageHandler
    {
        public string Body { get; set; } = "";
        public HttpStatusCode Status { get; set; } = HttpStatusCode.OK;
        public TaskCompletionSource? Hold { get; set; }
        public TaskCompletionSource Entered { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public int Requests;

        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref Requests);
            if (Hold is { } hold)
            {
                Hold = null;
                Entered.TrySetResult();
                await hold.Task.WaitAsync(cancellationToken);
            }

            return new HttpResponseMessage(Status) { Content = new StringContent(Body, Encoding.UTF8, "application/json") };
        }
    }

    static string Jwks(params string[] kids)
    {
        var keys = kids.Select(kid =>
        {
            using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var (x, y) = SigningKey.PublicPoint(key);
            return new JsonWebKeyDto("EC", "P-256", x, y, kid, "sig", "ES256");
        }).ToList();
        return System.Text.Json.JsonSerializer.Serialize(new JwksDocument(keys));
    }

    RemoteKeySource Source(FakeJwks handler) =>
        new(new HttpClient(handler), new Uri("http://freeside.test/.well-known/jwks.json"), _time, NullLogger.Instance);

    /// <summary>Lets callers parked on the fake clock (the refetch rate limit) move on, a few fake seconds at most.</summary>
    async Task<T[]> DrainAsync<T>(Task<T[]> all)
    {
        for (var i = 0; i < 20 && !all.IsCompleted; i++)
        {
            _time.Advance(TimeSpan.FromSeconds(1));
            await Task.Delay(20, TestContext.Current.CancellationToken);
        }

        return await all;
    }

    [Fact]
    public async Task A_burst_of_tokens_with_a_new_kid_is_answered_by_one_refetch_not_one_each()
    {
        var handler = new FakeJwks { Body = Jwks("old") };
        var source = Source(handler);
        Assert.Single(await source.GetKeysAsync("old", TestContext.Current.CancellationToken));

        // freeside switched keys at once (import, revocation of the active key, rotate --propagation-seconds 0).
        _time.Advance(TimeSpan.FromSeconds(2));
        handler.Body = Jwks("new", "old");
        var hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        handler.Hold = hold;
        var first = source.GetKeysAsync("new", TestContext.Current.CancellationToken).AsTask();
        await handler.Entered.Task;
        var rest = Enumerable.Range(0, 5).Select(_ => source.GetKeysAsync("new", TestContext.Current.CancellationToken).AsTask()).ToList();
        hold.TrySetResult();

        var all = await DrainAsync(Task.WhenAll([first, .. rest]));

        Assert.All(all, keys => Assert.Equal("new", Assert.Single(keys).Kid));
        Assert.Equal(2, handler.Requests);
    }

    [Fact]
    public async Task Callers_waiting_on_a_failed_refetch_share_its_answer_instead_of_each_retrying()
    {
        var handler = new FakeJwks { Body = Jwks("k1") };
        var source = Source(handler);
        await source.GetKeysAsync(null, TestContext.Current.CancellationToken);

        // The cache is stale and freeside is down: every verification used to fetch again in turn, a second apart.
        _time.Advance(TimeSpan.FromSeconds(31));
        handler.Status = HttpStatusCode.ServiceUnavailable;
        var hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        handler.Hold = hold;
        var first = source.GetKeysAsync("k1", TestContext.Current.CancellationToken).AsTask();
        await handler.Entered.Task;
        var rest = Enumerable.Range(0, 5).Select(_ => source.GetKeysAsync("k1", TestContext.Current.CancellationToken).AsTask()).ToList();
        hold.TrySetResult();

        var all = await DrainAsync(Task.WhenAll([first, .. rest]));

        // Keys younger than a minute still verify while freeside is unreachable.
        Assert.All(all, keys => Assert.Equal("k1", Assert.Single(keys).Kid));
        Assert.Equal(2, handler.Requests);
    }

    [Fact]
    public async Task A_caller_that_gives_up_during_a_refetch_does_not_cancel_it_for_the_callers_waiting_on_it()
    {
        var handler = new FakeJwks { Body = Jwks("old") };
        var source = Source(handler);
        Assert.Single(await source.GetKeysAsync("old", TestContext.Current.CancellationToken));

        // freeside switched keys at once; the first token with the new kid belongs to a request whose client hangs up
        // while the JWKS is on its way. The fetch ran on that request's token: it was cancelled, and every token waiting
        // on it was refused "unknown kid" (or, with keys over a minute old, with no keys at all).
        _time.Advance(TimeSpan.FromSeconds(2));
        handler.Body = Jwks("new", "old");
        var hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        handler.Hold = hold;
        using var gone = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        var first = source.GetKeysAsync("new", gone.Token).AsTask();
        await handler.Entered.Task;
        var rest = Enumerable.Range(0, 5).Select(_ => source.GetKeysAsync("new", TestContext.Current.CancellationToken).AsTask()).ToList();
        await gone.CancelAsync();
        await Task.Delay(50, TestContext.Current.CancellationToken);
        hold.TrySetResult();

        var all = await DrainAsync(Task.WhenAll(rest));

        Assert.All(all, keys => Assert.Equal("new", Assert.Single(keys).Kid));
        await Task.WhenAny(first); // the caller that left may finish either way
    }

    [Fact]
    public async Task A_jwks_that_never_answers_fails_the_fetch_after_the_timeout_instead_of_holding_every_verification()
    {
        var handler = new FakeJwks { Body = Jwks("k1") };
        var source = Source(handler);
        Assert.Single(await source.GetKeysAsync("k1", TestContext.Current.CancellationToken));

        // freeside's address black-holes (no answer, no reset) once the cached keys are over a minute old.
        _time.Advance(TimeSpan.FromSeconds(61));
        handler.Hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var waiting = source.GetKeysAsync("k1", TestContext.Current.CancellationToken).AsTask();
        await handler.Entered.Task;
        _time.Advance(RemoteKeySource.FetchTimeout);

        // Before, the fetch waited for the HttpClient's 100 s timeout, and every verification queued behind it.
        var keys = await waiting.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        Assert.Empty(keys); // and keys over a minute old are not used
    }

    [Theory]
    [InlineData("""{"status":"healthy","version":"1.0"}""")]
    [InlineData("""{"keys":null}""")]
    [InlineData("""[1,2]""")]
    public async Task A_document_that_is_not_a_jwks_is_a_failed_fetch_not_an_exception(string body)
    {
        // e.g. a JWKS URL pointing at freeside's /health: each verification threw (a 500) instead of rejecting the token.
        var handler = new FakeJwks { Body = body };
        var source = Source(handler);

        Assert.Empty(await source.GetKeysAsync("k1", TestContext.Current.CancellationToken));
    }

    [Fact]
    public async Task A_key_whose_point_is_not_on_the_curve_is_skipped_and_the_others_still_verify()
    {
        var good = Jwks("good");
        var bad = System.Text.Json.JsonSerializer.Serialize(new JsonWebKeyDto("EC", "P-256", "AAAA", "AAAA", "bad", "sig", "ES256"));
        var handler = new FakeJwks { Body = good.Replace("\"keys\":[", "\"keys\":[" + bad + ",", StringComparison.Ordinal) };
        var source = Source(handler);

        Assert.Empty(await source.GetKeysAsync("bad", TestContext.Current.CancellationToken));
        var key = Assert.Single(await source.GetKeysAsync("good", TestContext.Current.CancellationToken));
        Assert.NotNull(key.PublicSecurityKey());
    }
}
