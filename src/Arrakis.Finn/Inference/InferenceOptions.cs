using Arrakis.Shared.Contracts;
using Microsoft.Extensions.Options;

namespace Arrakis.Finn.Inference;

/// <summary><c>Inference</c>: retries, timeouts, breaker and SSE keepalive settings.</summary>
public sealed class InferenceOptions
{
    public const string Section = "Inference";

    /// <summary>Attempts per model (first try included) on 429/5xx/timeouts before falling back.</summary>
    public int MaxAttempts { get; set; } = 3;

    public int RetryBaseDelayMs { get; set; } = 200;

    public int RetryMaxDelayMs { get; set; } = 2000;

    /// <summary>Time allowed for the first chunk of an attempt, and between chunks after it.</summary>
    public int AttemptTimeoutMs { get; set; } = 30_000;

    /// <summary>
    /// Ask the vendor for a stream even when finn's caller wants JSON (finn gathers the answer), so that
    /// <see cref="AttemptTimeoutMs"/> bounds the vendor's silence rather than the whole generation: a long answer is not
    /// cut off, and not counted against its model, at 30 s. Not for a provider whose stream would not report exact
    /// usage (OpenAI with <c>Providers:OpenAI:StreamUsage=false</c>): that one is still asked for JSON.
    /// </summary>
    public bool StreamVendorAnswers { get; set; } = true;

    public int KeepAliveSeconds { get; set; } = 15;

    public int BreakerFailureThreshold { get; set; } = 3;

    public double BreakerOpenSeconds { get; set; } = 30;

    /// <summary>Relative jitter of the open period (0.2 = ± 20 %).</summary>
    public double BreakerJitter { get; set; } = 0.2;

    public int? BreakerSeed { get; set; }

    /// <summary>Largest request body finn reads.</summary>
    public int MaxBodyBytes { get; set; } = FinnContract.MaxBodyBytes;
}

internal sealed class InferenceOptionsValidator : IValidateOptions<InferenceOptions>
{
    public ValidateOptionsResult Validate(string? name, InferenceOptions o)
    {
        var errors = new List<string>();
        if (o.MaxAttempts is < 1 or > 10)
        {
            errors.Add("Inference:MaxAttempts must be 1..10.");
        }

        if (o.RetryBaseDelayMs < 0 || o.RetryMaxDelayMs < o.RetryBaseDelayMs)
        {
            errors.Add("Inference:RetryBaseDelayMs must be >= 0 and <= RetryMaxDelayMs.");
        }

        if (o.AttemptTimeoutMs < 1)
        {
            errors.Add("Inference:AttemptTimeoutMs must be positive.");
        }

        if (o.KeepAliveSeconds < 1)
        {
            errors.Add("Inference:KeepAliveSeconds must be positive.");
        }

        if (o.BreakerFailureThreshold < 1 || o.BreakerOpenSeconds <= 0 || o.BreakerJitter is < 0 or >= 1)
        {
            errors.Add("Inference:Breaker* settings are out of range (threshold >= 1, open seconds > 0, jitter in [0,1)).");
        }

        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}
