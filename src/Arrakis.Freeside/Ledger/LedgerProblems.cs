using Arrakis.Shared.Http;
using Microsoft.AspNetCore.Http;

namespace Arrakis.Freeside.Ledger;

/// <summary>The one mapping from ledger outcomes to HTTP problems (invoke uses it too).</summary>
public static class LedgerProblems
{
    public static IResult Reserve(ReserveResult result, string communityId) => result.Status switch
    {
        ReserveStatus.BudgetExceeded => Problems.Create(402, "BUDGET_EXCEEDED", result.Detail ?? "The monthly budget cannot cover this call.",
            new Dictionary<string, object?> { ["limitedBy"] = "budget", ["budgetRemainingMicro"] = result.BudgetRemainingMicro, ["walletAvailableMicro"] = result.WalletAvailableMicro }),
        ReserveStatus.WalletInsufficient => Problems.Create(402, "BUDGET_EXCEEDED", result.Detail ?? "The credit wallet cannot cover this call.",
            new Dictionary<string, object?> { ["limitedBy"] = "wallet", ["budgetRemainingMicro"] = result.BudgetRemainingMicro, ["walletAvailableMicro"] = result.WalletAvailableMicro }),
        ReserveStatus.CommunityNotFound => Problems.NotFound("community", communityId),
        ReserveStatus.Invalid => Problems.Invalid(result.Field ?? "amountMicro", result.Detail ?? "Invalid reservation."),
        _ => Problems.Create(409, "RESERVATION_EXISTS", "The reservation id is already in use."),
    };
}
