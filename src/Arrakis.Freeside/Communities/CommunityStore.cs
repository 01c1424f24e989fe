using Arrakis.Freeside.Ledger;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Storage;
using Dapper;

namespace Arrakis.Freeside.Communities;

public sealed record Community(string Id, string Name, Tier Tier, long MonthlyBudgetCents, long CreatedAt, long UpdatedAt);

public sealed record Agent(string Id, string Name, string CommunityId, string NftContract, string NftTokenId, long CreatedAt);

public enum CommunityStatus
{
    Created,
    Updated,
    NotFound,
    Invalid,
    BudgetBelowUsage,
    AliasCycle,
}

public sealed record CommunityResult(CommunityStatus Status, string? Detail = null, string? Field = null);

/// <summary>Communities, tenant aliases and agents. Creating a community also opens its ledger accounts.</summary>
public sealed class CommunityStore(Database db, TimeProvider time)
{
    /// <summary>A cap on how far alias chains are followed, so a cycle that slipped in can never loop forever.</summary>
    const int MaxAliasDepth = 8;

    /// <summary>
    /// How long a resolved tenant → community answer is reused on the invoke path. Writes through this store clear it at
    /// once; a change made by another replica or process (the CLI) is seen within this long. Misses are never cached, so
    /// a community created anywhere is usable at once.
    /// </summary>
    public static readonly TimeSpan TenantCacheTtl = TimeSpan.FromSeconds(1);

    const int TenantCacheLimit = 10_000;

    readonly System.Collections.Concurrent.ConcurrentDictionary<string, (Community Community, DateTimeOffset Until)> _tenants = new(StringComparer.Ordinal);

    public const long MaxBudgetCents = LedgerIds.MaxAmountMicro / 10_000;

    /// <summary>
    /// A display name: 1-200 characters, not all blank, with no control characters (PostgreSQL's text cannot hold a NUL,
    /// and a newline or escape would end up in logs and dashboards) and no lone UTF-16 surrogate.
    /// </summary>
    static bool IsName(string? name)
    {
        if (string.IsNullOrWhiteSpace(name) || name.Length > 200)
        {
            return false;
        }

        for (var i = 0; i < name.Length; i++)
        {
            if (char.IsControl(name[i]) || (char.IsSurrogate(name[i]) && !char.IsSurrogatePair(name, i++)))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Creates or updates a community. A null <paramref name="tier"/> makes a new community free and leaves an existing one's tier as it is.</summary>
    public async Task<CommunityResult> UpsertAsync(string id, string name, Tier? tier, long monthlyBudgetCents, CancellationToken ct = default)
    {
        if (!LedgerIds.IsValid(id))
        {
            return new(CommunityStatus.Invalid, LedgerIds.Rule("id"), "id");
        }

        if (!IsName(name))
        {
            return new(CommunityStatus.Invalid, "name must be 1-200 printable characters.", "name");
        }

        if (monthlyBudgetCents < 0 || monthlyBudgetCents > MaxBudgetCents)
        {
            return new(CommunityStatus.Invalid, $"monthlyBudgetCents must be between 0 and {MaxBudgetCents}.", "monthlyBudgetCents");
        }

        return await WriteAsync(async (c, tx) =>
        {
            var at = time.GetUtcNow().ToUnixTimeMilliseconds();
            var created = await c.ExecuteAsync(
                """
                INSERT INTO communities (id, name, tier, monthly_budget_cents, created_at, updated_at)
                VALUES (@id, @name, @tier, @budget, @at, @at) ON CONFLICT (id) DO NOTHING
                """,
                new { id, name, tier = TierName(tier ?? Tier.Free), budget = monthlyBudgetCents, at }, tx) == 1;
            if (created)
            {
                foreach (var (account, code) in new[] { (LedgerIds.Wallet(id), "wallet"), (LedgerIds.Spend(id), "spend"), (LedgerIds.Issuance(id), "issuance"), (LedgerIds.Expired(id), "expired") })
                {
                    await c.ExecuteAsync("INSERT INTO ledger_accounts (id, community_id, code) VALUES (@account, @id, @code) ON CONFLICT (id) DO NOTHING",
                        new { account, id, code }, tx);
                }

                return (new CommunityResult(CommunityStatus.Created), true);
            }

            await c.ExecuteAsync("UPDATE communities SET name = @name, tier = COALESCE(@tier, tier), updated_at = @at WHERE id = @id",
                new { id, name, tier = tier is { } t ? TierName(t) : null, at }, tx);
            var budget = await SetBudgetCoreAsync(c, tx, id, monthlyBudgetCents, at);
            return budget.Status == CommunityStatus.Updated ? (budget, true) : (budget, false);
        }, ct);
    }

    /// <summary>Sets the monthly budget, for this month too; refused when this month's committed + reserved already exceed it.</summary>
    public async Task<CommunityResult> SetBudgetAsync(string id, long monthlyBudgetCents, CancellationToken ct = default)
    {
        if (!LedgerIds.IsValid(id))
        {
            return new(CommunityStatus.Invalid, LedgerIds.Rule("id"), "id");
        }

        if (monthlyBudgetCents < 0 || monthlyBudgetCents > MaxBudgetCents)
        {
            return new(CommunityStatus.Invalid, $"monthlyBudgetCents must be between 0 and {MaxBudgetCents}.", "monthlyBudgetCents");
        }

        return await WriteAsync(async (c, tx) =>
        {
            var result = await SetBudgetCoreAsync(c, tx, id, monthlyBudgetCents, time.GetUtcNow().ToUnixTimeMilliseconds());
            return (result, result.Status == CommunityStatus.Updated);
        }, ct);
    }

    async Task<CommunityResult> SetBudgetCoreAsync(System.Data.Common.DbConnection c, System.Data.Common.DbTransaction tx, string id, long cents, long at)
    {
        var month = LedgerIds.Month(time.GetUtcNow());
        await Ledger.Ledger.EnsureMonthAsync(c, tx, id, month);
        // The month row carries the limit beside committed and reserved, so reserve checks all three in one row.
        var fits = await c.ExecuteAsync(
            "UPDATE budget_months SET limit_micro = @limit WHERE community_id = @id AND month = @month AND committed_micro + reserved_micro <= @limit",
            new { id, month, limit = cents * 10_000 }, tx);
        if (fits == 0)
        {
            var used = await c.QuerySingleOrDefaultAsync<(long Committed, long Reserved)?>(
                "SELECT committed_micro, reserved_micro FROM budget_months WHERE community_id = @id AND month = @month", new { id, month }, tx);
            if (used is not { } u)
            {
                return new CommunityResult(CommunityStatus.NotFound, $"Community '{id}' does not exist.");
            }

            // The figures an operator needs to pick a budget that fits (it said only that the spend exceeded it).
            var lowest = (u.Committed + u.Reserved + 9_999) / 10_000;
            return new CommunityResult(CommunityStatus.BudgetBelowUsage,
                $"This month ({month}) has {u.Committed} micro-USD committed and {u.Reserved} reserved, more than a budget of {cents} cents " +
                $"({cents * 10_000} micro-USD); the lowest budget that fits now is {lowest} cents.");
        }

        await c.ExecuteAsync("UPDATE communities SET monthly_budget_cents = @cents, updated_at = @at WHERE id = @id", new { id, cents, at }, tx);
        return new CommunityResult(CommunityStatus.Updated);
    }

    public async Task<Community?> FindAsync(string id, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        var row = await c.QuerySingleOrDefaultAsync<CommunityRow>(
            "SELECT id AS Id, name AS Name, tier AS Tier, monthly_budget_cents AS MonthlyBudgetCents, created_at AS CreatedAt, updated_at AS UpdatedAt FROM communities WHERE id = @id",
            new { id });
        return row is null ? null : new Community(row.Id, row.Name, ParseTier(row.Tier) ?? Tier.Free, row.MonthlyBudgetCents, row.CreatedAt, row.UpdatedAt);
    }

    public async Task<IReadOnlyList<string>> ListIdsAsync(CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return (await c.QueryAsync<string>("SELECT id FROM communities ORDER BY id")).ToList();
    }

    /// <summary>
    /// Maps a token's tenant id to a community: through tenant_aliases (following alias chains), or directly when the
    /// tenant id is itself a community id. Null when nothing matches.
    /// </summary>
    public async Task<string?> ResolveTenantAsync(string tenantId, CancellationToken ct = default) =>
        (await FindForTenantAsync(tenantId, ct))?.Id;

    /// <summary>
    /// The community a token's tenant id maps to, in one query: the alias chain is followed (at most
    /// <see cref="MaxAliasDepth"/> hops) to the first id that is not itself an alias, which must be a community.
    /// </summary>
    public async Task<Community?> FindForTenantAsync(string tenantId, CancellationToken ct = default)
    {
        var now = time.GetUtcNow();
        if (_tenants.TryGetValue(tenantId, out var cached) && cached.Until > now)
        {
            return cached.Community;
        }

        var found = await QueryForTenantAsync(tenantId, ct);
        if (found is not null)
        {
            if (_tenants.Count >= TenantCacheLimit)
            {
                _tenants.Clear();
            }

            _tenants[tenantId] = (found, now + TenantCacheTtl);
        }

        return found;
    }

    async Task<Community?> QueryForTenantAsync(string tenantId, CancellationToken ct)
    {
        await using var c = await db.OpenAsync(ct);
        var row = await c.QuerySingleOrDefaultAsync<CommunityRow>(
            """
            WITH RECURSIVE chain (id, depth) AS (
                SELECT CAST(@tenantId AS TEXT), 0
                UNION ALL
                SELECT a.community_id, chain.depth + 1 FROM tenant_aliases a JOIN chain ON a.tenant_id = chain.id WHERE chain.depth < @maxDepth
            )
            SELECT co.id AS Id, co.name AS Name, co.tier AS Tier, co.monthly_budget_cents AS MonthlyBudgetCents, co.created_at AS CreatedAt, co.updated_at AS UpdatedAt
            FROM chain JOIN communities co ON co.id = chain.id
            WHERE NOT EXISTS (SELECT 1 FROM tenant_aliases t WHERE t.tenant_id = chain.id)
            ORDER BY chain.depth LIMIT 1
            """,
            new { tenantId, maxDepth = MaxAliasDepth });
        return row is null ? null : new Community(row.Id, row.Name, ParseTier(row.Tier) ?? Tier.Free, row.MonthlyBudgetCents, row.CreatedAt, row.UpdatedAt);
    }

    /// <summary>Points a tenant alias at a community (or at another alias); refuses anything that would form a cycle.</summary>
    public async Task<CommunityResult> SetAliasAsync(string tenantId, string target, CancellationToken ct = default)
    {
        if (LedgerIds.FirstInvalid(("tenantId", tenantId), ("communityId", target)) is { } badId)
        {
            return new(CommunityStatus.Invalid, LedgerIds.Rule(badId), badId);
        }

        return await WriteAsync(async (c, tx) =>
        {
            if (db.IsPostgres)
            {
                // Alias edits are rare; one at a time keeps the cycle check sound across replicas.
                await c.ExecuteAsync("SELECT pg_advisory_xact_lock(hashtext('tenant_aliases'))", transaction: tx);
            }

            var current = target;
            for (var depth = 0; ; depth++)
            {
                if (current == tenantId)
                {
                    return (new CommunityResult(CommunityStatus.AliasCycle, $"Aliasing '{tenantId}' to '{target}' would form a cycle."), false);
                }

                var next = await c.QuerySingleOrDefaultAsync<string>("SELECT community_id FROM tenant_aliases WHERE tenant_id = @current", new { current }, tx);
                if (next is null)
                {
                    break;
                }

                if (depth >= MaxAliasDepth)
                {
                    return (new CommunityResult(CommunityStatus.AliasCycle, $"The alias chain from '{target}' is longer than {MaxAliasDepth}."), false);
                }

                current = next;
            }

            if (await c.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM communities WHERE id = @current", new { current }, tx) == 0)
            {
                return (new CommunityResult(CommunityStatus.NotFound, $"'{target}' does not lead to an existing community."), false);
            }

            var created = await c.ExecuteAsync(
                "INSERT INTO tenant_aliases (tenant_id, community_id, created_at) VALUES (@tenantId, @target, @at) ON CONFLICT (tenant_id) DO UPDATE SET community_id = excluded.community_id",
                new { tenantId, target, at = time.GetUtcNow().ToUnixTimeMilliseconds() }, tx);
            return (new CommunityResult(created == 1 ? CommunityStatus.Updated : CommunityStatus.Invalid), true);
        }, ct);
    }

    public async Task<CommunityResult> UpsertAgentAsync(Agent agent, CancellationToken ct = default)
    {
        if (LedgerIds.FirstInvalid(("id", agent.Id), ("communityId", agent.CommunityId)) is { } badId)
        {
            return new(CommunityStatus.Invalid, LedgerIds.Rule(badId), badId);
        }

        if (!IsName(agent.Name))
        {
            return new(CommunityStatus.Invalid, "name must be 1-200 printable characters.", "name");
        }

        if (!System.Text.RegularExpressions.Regex.IsMatch(agent.NftContract, @"^0x[0-9a-fA-F]{40}\z"))
        {
            return new(CommunityStatus.Invalid, "nftContract must be a 0x-prefixed 20-byte hex address.", "nftContract");
        }

        if (!System.Text.RegularExpressions.Regex.IsMatch(agent.NftTokenId, @"^[0-9]{1,78}\z"))
        {
            return new(CommunityStatus.Invalid, "nftTokenId must be a decimal token id.", "nftTokenId");
        }

        return await WriteAsync(async (c, tx) =>
        {
            if (await c.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM communities WHERE id = @id", new { id = agent.CommunityId }, tx) == 0)
            {
                return (new CommunityResult(CommunityStatus.NotFound, $"Community '{agent.CommunityId}' does not exist."), false);
            }

            await c.ExecuteAsync(
                """
                INSERT INTO agents (id, name, community_id, nft_contract, nft_token_id, created_at)
                VALUES (@Id, @Name, @CommunityId, @NftContract, @NftTokenId, @CreatedAt)
                ON CONFLICT (id) DO UPDATE SET name = excluded.name, community_id = excluded.community_id, nft_contract = excluded.nft_contract,
                    nft_token_id = excluded.nft_token_id, created_at = excluded.created_at
                """,
                agent, tx);
            return (new CommunityResult(CommunityStatus.Updated), true);
        }, ct);
    }

    public async Task<Agent?> FindAgentAsync(string id, CancellationToken ct = default)
    {
        await using var c = await db.OpenAsync(ct);
        return await c.QuerySingleOrDefaultAsync<Agent>(
            "SELECT id AS Id, name AS Name, community_id AS CommunityId, nft_contract AS NftContract, nft_token_id AS NftTokenId, created_at AS CreatedAt FROM agents WHERE id = @id",
            new { id });
    }

    public static string TierName(Tier tier) => tier.ToString().ToLowerInvariant();

    public static Tier? ParseTier(string? value) => value?.ToLowerInvariant() switch
    {
        "free" => Tier.Free,
        "pro" => Tier.Pro,
        "enterprise" => Tier.Enterprise,
        _ => null,
    };

    sealed record CommunityRow(string Id, string Name, string Tier, long MonthlyBudgetCents, long CreatedAt, long UpdatedAt);

    async Task<T> WriteAsync<T>(Func<System.Data.Common.DbConnection, System.Data.Common.DbTransaction, Task<(T, bool)>> work, CancellationToken ct)
    {
        await using var c = await db.OpenAsync(ct);
        try
        {
            return await Database.InWriteTransactionAsync(c, work, ct);
        }
        finally
        {
            _tenants.Clear(); // a tier, budget or alias may have changed
        }
    }
}
