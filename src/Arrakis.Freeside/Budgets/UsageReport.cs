using System.Globalization;
using System.Text;
using Arrakis.Freeside.Communities;
using Arrakis.Freeside.Ledger;
using Arrakis.Shared.Http;
using Microsoft.AspNetCore.Http;

namespace Arrakis.Freeside.Budgets;

/// <summary>
/// <c>GET /api/v1/communities/{id}/usage</c>: where a community's month went. The month's totals (they equal the budget's
/// committed spend, C5), the same split per pool, model and agent, and one page of the finalized calls, newest first.
/// </summary>
public static class UsageReport
{
    public const int DefaultLimit = 100;

    public const int MaxLimit = 500;

    public sealed record Record(string Id, DateTimeOffset CreatedAt, string? AgentId, string? Pool, string? Model, long PromptTokens, long CompletionTokens,
        long CostMicro, string? TraceId, string? IdempotencyKey);

    public sealed record Total(string? Key, long Invocations, long CostMicro, long CostCents, long PromptTokens, long CompletionTokens)
    {
        public static Total From(UsageTotal t) => new(t.Key, t.Invocations, t.CostMicro, t.CostMicro / 10_000, t.PromptTokens, t.CompletionTokens);
    }

    public sealed record Report(string CommunityId, string Month, Total Totals, IReadOnlyList<Total> ByPool, IReadOnlyList<Total> ByModel,
        IReadOnlyList<Total> ByAgent, IReadOnlyList<Record> Records, string? NextCursor);

    public static async Task<IResult> GetAsync(string id, string? month, string? limit, string? cursor, HttpContext http, CommunityStore communities,
        UsageStore usage, TimeProvider time, CancellationToken ct)
    {
        var own = await BudgetsApi.CommunityOfAsync(http, communities, ct);
        if (own != id)
        {
            return Problems.Forbidden(own is null
                ? "The token's tenant_id does not map to any community."
                : $"The token acts for community '{own}', not '{id}'.");
        }

        month ??= LedgerIds.Month(time.GetUtcNow());
        if (!DateTime.TryParseExact(month, "yyyy-MM", CultureInfo.InvariantCulture, DateTimeStyles.None, out _))
        {
            return Problems.Invalid("month", "month must be a calendar month written yyyy-MM, e.g. 2026-11.");
        }

        var size = DefaultLimit;
        if (limit is not null && (!int.TryParse(limit, NumberStyles.None, CultureInfo.InvariantCulture, out size) || size is < 1 or > MaxLimit))
        {
            return Problems.Invalid("limit", $"limit must be a whole number from 1 to {MaxLimit}.");
        }

        (long, string)? before = null;
        if (cursor is not null)
        {
            if (ParseCursor(cursor) is not { } position)
            {
                return Problems.Invalid("cursor", "cursor must be a nextCursor value from an earlier page of this report.");
            }

            before = position;
        }

        if (await communities.FindAsync(id, ct) is null)
        {
            return Problems.NotFound("community", id);
        }

        // One more than the page: whether there is a next page, without a count.
        var page = await usage.PageAsync(id, month, size + 1, before, ct);
        var records = page.Take(size).Select(r => new Record(r.Id, DateTimeOffset.FromUnixTimeMilliseconds(r.CreatedAt), r.AgentId, r.Pool, r.Model,
            r.PromptTokens, r.CompletionTokens, r.CostMicro, r.TraceId, r.IdempotencyKey)).ToList();
        var next = page.Count > size ? Cursor(page[size - 1]) : null;
        var byPool = await usage.TotalsAsync(id, month, UsageDimension.Pool, ct);
        var all = new UsageTotal(null, byPool.Sum(t => t.Invocations), byPool.Sum(t => t.CostMicro), byPool.Sum(t => t.PromptTokens), byPool.Sum(t => t.CompletionTokens));
        return TypedResults.Ok(new Report(id, month, Total.From(all), byPool.Select(Total.From).ToList(),
            (await usage.TotalsAsync(id, month, UsageDimension.Model, ct)).Select(Total.From).ToList(),
            (await usage.TotalsAsync(id, month, UsageDimension.Agent, ct)).Select(Total.From).ToList(),
            records, next));
    }

    /// <summary>The position after <paramref name="last"/>: its created_at and id, base64url so it reads as one opaque token.</summary>
    static string Cursor(UsageEntry last) =>
        Microsoft.IdentityModel.Tokens.Base64UrlEncoder.Encode(Encoding.UTF8.GetBytes(last.CreatedAt.ToString(CultureInfo.InvariantCulture) + ":" + last.Id));

    static (long, string)? ParseCursor(string cursor)
    {
        try
        {
            var text = Encoding.UTF8.GetString(Microsoft.IdentityModel.Tokens.Base64UrlEncoder.DecodeBytes(cursor));
            var colon = text.IndexOf(':', StringComparison.Ordinal);
            return colon > 0 && long.TryParse(text.AsSpan(0, colon), NumberStyles.None, CultureInfo.InvariantCulture, out var at) && LedgerIds.IsValid(text[(colon + 1)..])
                ? (at, text[(colon + 1)..])
                : null;
        }
        catch (FormatException)
        {
            return null;
        }
    }
}
