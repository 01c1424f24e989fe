namespace Arrakis.Shared.Hosting;

/// <summary>
/// Meter and instrument names. Feature code creates its instruments with these names (and the unit
/// <see cref="MetricCatalog"/> gives); the catalog maps each one to its CloudWatch and Prometheus names.
/// </summary>
public static class MetricNames
{
    public const string AuthMeter = "Arrakis.Auth";
    public const string JwtValidationFailure = "JwtValidationFailure";

    public const string BillingMeter = "Arrakis.Billing";
    public const string ConservationCheckPassed = "ConservationCheckPassed";
    public const string ConservationCheckFailed = "ConservationCheckFailed";
    public const string CreditsMinted = "CreditsMinted";
    public const string CreditsSpent = "CreditsSpent";

    public const string PaymentsMeter = "Arrakis.Payments";
    public const string PaymentCreated = "PaymentCreated";
    public const string PaymentFinished = "PaymentFinished";
    public const string PaymentFailed = "PaymentFailed";

    public const string AgentMeter = "Arrakis.Agent";
    public const string BudgetCommittedCents = "budget_committed_cents";
    public const string BudgetReservedCents = "budget_reserved_cents";
    public const string BudgetAvailableCents = "budget_available_cents";
    public const string BudgetLimitCents = "budget_limit_cents";
    public const string AgentBudgetOverspendCents = "agent_budget_overspend_cents";
    public const string InferenceLatencyMs = "InferenceLatencyMs";
    public const string InvocationCount = "invocation_count";
    public const string InvocationCostMicro = "invocation_cost_micro";

    public const string ApiMeter = "Arrakis.Api";
    public const string RequestCount = "RequestCount";
    public const string Http4xxCount = "Http4xxCount";
    public const string Http5xxCount = "Http5xxCount";

    public const string ProcessMeter = "Arrakis.Process";
    public const string ProcessMemoryLimitBytes = "process_memory_limit_bytes";

    /// <summary>The .NET runtime's built-in meter (CPU time, working set), exported to Prometheus only.</summary>
    public const string RuntimeMeter = "System.Runtime";
}
