using Arrakis.Shared.Contracts;

namespace Arrakis.Finn.Routing;

/// <summary>The default router: the first healthy candidate in configured order (<c>routing.mode</c> "disabled").</summary>
public sealed class DeterministicRouter : IModelRouter
{
    public const string Mode = "disabled";
    public const string Reason = "deterministic";

    public Task<RoutingDecision> ChooseAsync(RoutingRequest request, CancellationToken ct) => Task.FromResult(Choose(request));

    public static RoutingDecision Choose(RoutingRequest request)
    {
        var chosen = request.Candidates.FirstOrDefault(c => c.Healthy)
            ?? throw new InvalidOperationException("No healthy candidate to route to.");
        return new RoutingDecision(chosen, new RoutingInfo(Mode, Reason, chosen.Model, new Dictionary<string, double?>()));
    }
}
