using System.Collections.Concurrent;
using Microsoft.Extensions.Options;

namespace Arrakis.Finn.Inference;

public enum BreakerState
{
    Closed,
    Open,
    HalfOpen,
}

/// <summary>
/// A circuit breaker per model: opens after <see cref="InferenceOptions.BreakerFailureThreshold"/> consecutive failures,
/// half-opens after <see cref="InferenceOptions.BreakerOpenSeconds"/> ± jitter and lets one probe through.
/// Time comes from the injected <see cref="TimeProvider"/>.
/// </summary>
public sealed class ModelBreakers(IOptions<InferenceOptions> options, TimeProvider time)
{
    readonly InferenceOptions _options = options.Value;
    readonly ConcurrentDictionary<string, Breaker> _breakers = new(StringComparer.Ordinal);
    readonly Random _jitter = options.Value.BreakerSeed is { } seed ? new Random(seed) : new Random();
    readonly Lock _jitterLock = new();

    /// <summary>The state a model is in now (an open breaker whose wait elapsed reads as half-open).</summary>
    public BreakerState StateOf(string model)
    {
        if (!_breakers.TryGetValue(model, out var b))
        {
            return BreakerState.Closed;
        }

        lock (b)
        {
            return Effective(b);
        }
    }

    /// <summary>
    /// How long until a request may try this model again: zero when it may now, the rest of the open period when its
    /// breaker is open, and null when that cannot be told (half-open with its probe in flight: it depends on the probe).
    /// </summary>
    public TimeSpan? AvailableIn(string model)
    {
        if (!_breakers.TryGetValue(model, out var b))
        {
            return TimeSpan.Zero;
        }

        lock (b)
        {
            return Effective(b) switch
            {
                BreakerState.Closed => TimeSpan.Zero,
                BreakerState.HalfOpen => b.ProbeInFlight ? null : TimeSpan.Zero,
                _ => b.OpenUntil - time.GetUtcNow(),
            };
        }
    }

    /// <summary>Whether a request may try this model now: closed, or half-open with no probe in flight.</summary>
    public bool IsAvailable(string model)
    {
        if (!_breakers.TryGetValue(model, out var b))
        {
            return true;
        }

        lock (b)
        {
            return Effective(b) switch
            {
                BreakerState.Closed => true,
                BreakerState.HalfOpen => !b.ProbeInFlight,
                _ => false,
            };
        }
    }

    /// <summary>
    /// Claims the right to call the model; in half-open state only one caller gets it, and <paramref name="probe"/>
    /// says whether this caller holds that probe. Only the probe's holder frees its slot
    /// (<see cref="RecordFailure"/>, <see cref="Release"/>): a call that began before the breaker opened and ends
    /// while a probe is in flight must not let a second probe through.
    /// </summary>
    public bool TryAcquire(string model, out bool probe)
    {
        probe = false;
        var b = _breakers.GetOrAdd(model, _ => new Breaker());
        lock (b)
        {
            switch (Effective(b))
            {
                case BreakerState.Closed:
                    return true;
                case BreakerState.HalfOpen when !b.ProbeInFlight:
                    b.State = BreakerState.HalfOpen;
                    b.ProbeInFlight = true;
                    probe = true;
                    return true;
                default:
                    return false;
            }
        }
    }

    public void RecordSuccess(string model)
    {
        var b = _breakers.GetOrAdd(model, _ => new Breaker());
        lock (b)
        {
            b.State = BreakerState.Closed;
            b.ConsecutiveFailures = 0;
            b.ProbeInFlight = false;
        }
    }

    /// <summary>
    /// Records a failure; returns true when this failure opened the breaker. <paramref name="probe"/>: whether the
    /// caller holds the half-open probe (see <see cref="TryAcquire(string, out bool)"/>); only then is its slot freed.
    /// </summary>
    public bool RecordFailure(string model, bool probe)
    {
        var b = _breakers.GetOrAdd(model, _ => new Breaker());
        lock (b)
        {
            b.ConsecutiveFailures++;
            // Effective, not stored: an open period that elapsed while a probe was still in flight reads as half-open,
            // so the probe's failure re-opens the breaker instead of leaving it open with no wait.
            var state = Effective(b);
            if (probe)
            {
                b.ProbeInFlight = false;
            }

            if (state == BreakerState.HalfOpen || (state == BreakerState.Closed && b.ConsecutiveFailures >= _options.BreakerFailureThreshold))
            {
                b.State = BreakerState.Open;
                b.OpenUntil = time.GetUtcNow() + OpenDuration();
                return true;
            }

            return false;
        }
    }

    /// <summary>
    /// Releases a half-open probe that ended without a verdict (the client went away, the vendor refused the request
    /// itself). A caller that does not hold the probe (<paramref name="probe"/> false) leaves it in flight.
    /// </summary>
    public void Release(string model, bool probe)
    {
        if (probe && _breakers.TryGetValue(model, out var b))
        {
            lock (b)
            {
                b.ProbeInFlight = false;
            }
        }
    }

    public IReadOnlyDictionary<string, BreakerState> Snapshot() =>
        _breakers.Keys.ToDictionary(k => k, StateOf, StringComparer.Ordinal);

    BreakerState Effective(Breaker b) =>
        b.State == BreakerState.Open && time.GetUtcNow() >= b.OpenUntil ? BreakerState.HalfOpen : b.State;

    TimeSpan OpenDuration()
    {
        double factor;
        lock (_jitterLock)
        {
            factor = 1 + (((_jitter.NextDouble() * 2) - 1) * _options.BreakerJitter);
        }

        return TimeSpan.FromSeconds(_options.BreakerOpenSeconds * factor);
    }

    sealed class Breaker
    {
        public BreakerState State { get; set; } = BreakerState.Closed;

        public int ConsecutiveFailures { get; set; }

        public bool ProbeInFlight { get; set; }

        public DateTimeOffset OpenUntil { get; set; }
    }
}
