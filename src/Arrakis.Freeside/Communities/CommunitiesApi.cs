using Arrakis.Freeside.Ledger;
using Arrakis.Shared.Http;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Arrakis.Freeside.Communities;

public sealed record CommunityRequest(string? Name, string? Tier, long? MonthlyBudgetCents);

public sealed record BudgetRequest(long? MonthlyBudgetCents);

public sealed record AliasRequest(string? CommunityId);

public sealed record AgentRequest(string? CommunityId, string? Name, string? NftContract, string? NftTokenId, DateTimeOffset? CreatedAt);

public sealed record GrantRequest(string? LotId, long? AmountMicro, long? AmountCents, string? Source, DateTimeOffset? ExpiresAt);

public sealed record SpendRequest(string? ReservationId, long? AmountMicro, string? AgentId, string? Pool, string? Model, long? PromptTokens, long? CompletionTokens, string? TraceId);

/// <summary>Operator routes: communities, budgets, credit grants, recorded spend, tenant aliases and agents.</summary>
public static class CommunitiesApi
{
    public static IEndpointRouteBuilder MapCommunitiesApi(this IEndpointRouteBuilder app)
    {
        var admin = app.MapGroup("/api/v1/admin").WithTags("Admin");
        admin.MapPut("/communities/{id}", UpsertAsync).RequireOperator();
        admin.MapGet("/communities/{id}", GetAsync).RequireOperator();
        admin.MapPut("/communities/{id}/budget", SetBudgetAsync).RequireOperator();
        admin.MapPost("/communities/{id}/credits", GrantAsync).RequireOperator();
        admin.MapPost("/communities/{id}/spend", SpendAsync).RequireOperator();
        admin.MapPut("/tenant-aliases/{tenantId}", AliasAsync).RequireOperator();
        admin.MapPut("/agents/{id}", AgentAsync).RequireOperator();
        return app;
    }

    static async Task<IResult> UpsertAsync(string id, CommunityRequest body, CommunityStore store, CancellationToken ct)
    {
        // Without a tier a new community is free and an existing one keeps its tier (a budget change must not downgrade it).
        var tier = body.Tier is null ? null : CommunityStore.ParseTier(body.Tier);
        if (body.Tier is not null && tier is null)
        {
            return Problems.Invalid("tier", "tier must be free, pro or enterprise.");
        }

        if (string.IsNullOrWhiteSpace(body.Name))
        {
            return Problems.Invalid("name", "name is required.");
        }

        if (body.MonthlyBudgetCents is null)
        {
            return Problems.Invalid("monthlyBudgetCents", "monthlyBudgetCents is required.");
        }

        var result = await store.UpsertAsync(id, body.Name, tier, body.MonthlyBudgetCents.Value, ct);
        return result.Status is CommunityStatus.Created or CommunityStatus.Updated
            ? TypedResults.Ok(await store.FindAsync(id, ct))
            : ToProblem(result, id);
    }

    static async Task<IResult> GetAsync(string id, CommunityStore store, CancellationToken ct) =>
        await store.FindAsync(id, ct) is { } community ? TypedResults.Ok(community) : Problems.NotFound("community", id);

    static async Task<IResult> SetBudgetAsync(string id, BudgetRequest body, CommunityStore store, CancellationToken ct)
    {
        if (body.MonthlyBudgetCents is not { } cents)
        {
            return Problems.Invalid("monthlyBudgetCents", "monthlyBudgetCents is required.");
        }

        var result = await store.SetBudgetAsync(id, cents, ct);
        return result.Status == CommunityStatus.Updated ? TypedResults.Ok(await store.FindAsync(id, ct)) : ToProblem(result, id);
    }

    static async Task<IResult> GrantAsync(string id, GrantRequest body, Ledger.Ledger ledger, TimeProvider time, CancellationToken ct)
    {
        if (InvalidId(id) is { } badId)
        {
            return badId;
        }

        if (body.AmountMicro is not null && body.AmountCents is not null)
        {
            return Problems.Invalid("amountMicro", "Give amountMicro or amountCents, not both.");
        }

        if (body.ExpiresAt is { } expires && expires <= time.GetUtcNow())
        {
            // An expired lot would be spendable until the reaper's next pass and then only partly expire under pending holds.
            return Problems.Invalid("expiresAt", $"expiresAt ({expires:O}) has already passed; a credit lot must expire in the future.");
        }

        if (body.AmountMicro is null && body.AmountCents is { } cents and (<= 0 or > LedgerIds.MaxAmountMicro / 10_000))
        {
            // Checked before converting: cents * 10_000 of a huge negative number wraps around to a positive grant.
            return Problems.Invalid("amountCents", $"amountCents must be between 1 and {LedgerIds.MaxAmountMicro / 10_000}.");
        }

        var amount = body.AmountMicro ?? body.AmountCents * 10_000;
        if (string.IsNullOrEmpty(body.LotId))
        {
            return Problems.Invalid("lotId", "lotId is required.");
        }

        if (amount is null)
        {
            return Problems.Invalid("amountMicro", "amountMicro (or amountCents) is required.");
        }

        var result = await ledger.GrantAsync(id, body.LotId, amount.Value, body.Source ?? "grant", body.ExpiresAt, ct);
        return result.Status switch
        {
            GrantStatus.Granted => TypedResults.Created($"/api/v1/admin/communities/{id}/credits/{result.LotId}", result),
            GrantStatus.Duplicate => TypedResults.Ok(result),
            GrantStatus.CommunityNotFound => Problems.NotFound("community", id),
            GrantStatus.Conflict => Problems.Create(409, "LOT_CONFLICT", result.Detail!),
            _ => Problems.Invalid(result.Field ?? "body", result.Detail!),
        };
    }

    /// <summary>Records a spend through the ledger (reserve, then finalize at the same amount): for seeding and corrections.</summary>
    static async Task<IResult> SpendAsync(string id, SpendRequest body, Ledger.Ledger ledger, CancellationToken ct)
    {
        if (InvalidId(id) is { } badId)
        {
            return badId;
        }

        if (string.IsNullOrEmpty(body.ReservationId))
        {
            return Problems.Invalid("reservationId", "reservationId is required.");
        }

        if (body.AmountMicro is not { } amount)
        {
            return Problems.Invalid("amountMicro", "amountMicro is required.");
        }

        if (!LedgerIds.IsValid(body.ReservationId))
        {
            return Problems.Invalid("reservationId", LedgerIds.Rule("reservationId"));
        }

        foreach (var (field, value) in new[] { ("promptTokens", body.PromptTokens), ("completionTokens", body.CompletionTokens) })
        {
            if (value is < 0 or > 100_000_000)
            {
                return Problems.Invalid(field, $"{field} must be between 0 and 100000000.");
            }
        }

        foreach (var (field, value) in new[] { ("agentId", body.AgentId), ("pool", body.Pool), ("model", body.Model), ("traceId", body.TraceId) })
        {
            if (value is not null && (value.Length is 0 or > 255 || value.Any(char.IsControl)))
            {
                return Problems.Invalid(field, $"{field} must be 1-255 printable characters.");
            }
        }

        var reserve = await ledger.ReserveAsync(id, body.ReservationId, amount, ct: ct);
        if (!reserve.Admitted)
        {
            return LedgerProblems.Reserve(reserve, id);
        }

        // An id already in use is a retry of this very spend only when it is this community's, for this amount; anything
        // else (an invoke's reservation, another community's) must not be finalized, or the wrong call or community is charged.
        var existing = reserve.Status == ReserveStatus.Duplicate ? await ledger.FindReservationAsync(body.ReservationId, ct) : null;
        if (existing is not null && (existing.CommunityId != id || existing.AmountMicro != amount || existing.ActualMicro is { } actual && actual != amount))
        {
            return Problems.Create(409, "RESERVATION_EXISTS",
                $"The reservation id '{body.ReservationId}' is already in use by another call or another community; record this spend under a new id.");
        }

        var final = await ledger.FinalizeAsync(body.ReservationId, amount,
            new UsageRecord(body.AgentId, body.Pool, body.Model, body.PromptTokens ?? 0, body.CompletionTokens ?? 0, body.TraceId), ct);
        return final.Status is FinalizeStatus.Finalized or FinalizeStatus.Duplicate
            ? TypedResults.Ok(final)
            : Problems.Create(409, "RESERVATION_" + final.Status.ToString().ToUpperInvariant(), final.Detail ?? final.Status.ToString());
    }

    static async Task<IResult> AliasAsync(string tenantId, AliasRequest body, CommunityStore store, CancellationToken ct)
    {
        if (string.IsNullOrEmpty(body.CommunityId))
        {
            return Problems.Invalid("communityId", "communityId is required.");
        }

        var result = await store.SetAliasAsync(tenantId, body.CommunityId, ct);
        return result.Status == CommunityStatus.Updated
            ? TypedResults.Ok(new { tenantId, communityId = body.CommunityId })
            : ToProblem(result, body.CommunityId);
    }

    static async Task<IResult> AgentAsync(string id, AgentRequest body, CommunityStore store, TimeProvider time, CancellationToken ct)
    {
        if (body.CommunityId is not { Length: > 0 } communityId)
        {
            return Problems.Invalid("communityId", "communityId is required.");
        }

        if (body.NftContract is not { Length: > 0 } nftContract)
        {
            return Problems.Invalid("nftContract", "nftContract is required.");
        }

        if (body.NftTokenId is not { Length: > 0 } nftTokenId)
        {
            return Problems.Invalid("nftTokenId", "nftTokenId is required.");
        }

        var agent = new Agent(id, body.Name ?? id, communityId, nftContract, nftTokenId, (body.CreatedAt ?? time.GetUtcNow()).ToUnixTimeMilliseconds());
        var result = await store.UpsertAgentAsync(agent, ct);
        return result.Status == CommunityStatus.Updated ? TypedResults.Ok(agent) : ToProblem(result, body.CommunityId);
    }

    /// <summary>The path's community id, named <c>id</c> as the community routes name it (the ledger would say communityId).</summary>
    static IResult? InvalidId(string id) =>
        LedgerIds.IsValid(id) ? null : Problems.Invalid("id", LedgerIds.Rule("id"));

    static IResult ToProblem(CommunityResult result, string id) => result.Status switch
    {
        CommunityStatus.NotFound => Problems.Create(404, "NOT_FOUND", result.Detail ?? $"community '{id}' was not found."),
        CommunityStatus.BudgetBelowUsage => Problems.Create(409, "BUDGET_BELOW_USAGE", result.Detail!),
        CommunityStatus.AliasCycle => Problems.Create(409, "ALIAS_CYCLE", result.Detail!),
        _ => Problems.Invalid(result.Field ?? "body", result.Detail ?? "The request is invalid."),
    };
}
