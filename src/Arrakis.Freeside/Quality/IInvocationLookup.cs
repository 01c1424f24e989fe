namespace Arrakis.Freeside.Quality;

/// <summary>The pool and model that served an invocation.</summary>
public sealed record InvocationModel(string Pool, string Model);

/// <summary>
/// Finds the model a quality event is about: the invocation named by its trace id, or else the agent's latest one,
/// among the invocations of the caller's community only (another community's traces are neither read nor revealed).
/// The ledger's usage records implement this; <see cref="NoInvocationLookup"/> is the default until they are wired.
/// </summary>
public interface IInvocationLookup
{
    Task<InvocationModel?> FindByTraceAsync(string communityId, string traceId, CancellationToken ct);

    Task<InvocationModel?> LatestForAgentAsync(string communityId, string routingKey, CancellationToken ct);
}

/// <summary>Knows no invocations: events then carry no model or pool and only move the agent's overall score.</summary>
public sealed class NoInvocationLookup : IInvocationLookup
{
    public Task<InvocationModel?> FindByTraceAsync(string communityId, string traceId, CancellationToken ct) => Task.FromResult<InvocationModel?>(null);

    public Task<InvocationModel?> LatestForAgentAsync(string communityId, string routingKey, CancellationToken ct) => Task.FromResult<InvocationModel?>(null);
}
