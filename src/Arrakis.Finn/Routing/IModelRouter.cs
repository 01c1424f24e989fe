using Arrakis.Shared.Contracts;

namespace Arrakis.Finn.Routing;

/// <summary>One model that may serve a request: its pool and id, and whether its circuit breaker lets it through.</summary>
public sealed record RoutingCandidate(string Pool, string Model, bool Healthy);

/// <summary>What the router needs: the agent (routing key, e.g. <c>nft:123</c>) and the allowed candidates in priority order.</summary>
public sealed record RoutingRequest(string? Agent, IReadOnlyList<RoutingCandidate> Candidates, string TraceId);

public sealed record RoutingDecision(RoutingCandidate Chosen, RoutingInfo Info);

/// <summary>Chooses the model for a request among healthy candidates (deterministic, or by reputation).</summary>
public interface IModelRouter
{
    Task<RoutingDecision> ChooseAsync(RoutingRequest request, CancellationToken ct);
}
