using Arrakis.Freeside.Communities;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Storage;
using Dapper;

namespace Arrakis.Freeside.Tests.Communities;

/// <summary>Tenant → community in one query: direct ids, alias chains, dangling and over-long chains.</summary>
public sealed class TenantResolutionTests
{
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Alias_chains_resolve_to_the_community_at_their_end_and_nothing_else_resolves(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var db = new Database(TestStorage.Options(engine, "freeside"));
        await new Migrator(db).ApplyAsync(Migrator.FromAssembly(typeof(Database).Assembly, db.Engine).Concat(Migrator.FromAssembly(typeof(FreesideService).Assembly, db.Engine)), ct);
        var store = new CommunityStore(db, TimeProvider.System);
        Assert.Equal(CommunityStatus.Created, (await store.UpsertAsync("c1", "One", Tier.Pro, 500, ct)).Status);
        Assert.Equal(CommunityStatus.Created, (await store.UpsertAsync("c2", "Two", Tier.Free, 100, ct)).Status);
        await store.SetAliasAsync("t2", "c1", ct);
        await store.SetAliasAsync("t1", "t2", ct); // t1 → t2 → c1

        var found = await store.FindForTenantAsync("t1", ct);
        Assert.Equal(("c1", "One", Tier.Pro, 500L), (found!.Id, found.Name, found.Tier, found.MonthlyBudgetCents));
        Assert.Equal("c1", await store.ResolveTenantAsync("t2", ct));
        Assert.Equal("c2", (await store.FindForTenantAsync("c2", ct))!.Id); // a community id is its own tenant
        Assert.Null(await store.FindForTenantAsync("nobody", ct));

        await using (var c = await db.OpenAsync(ct))
        {
            // Rows the API refuses to write, as a buggy or old writer might have left them.
            await c.ExecuteAsync("INSERT INTO tenant_aliases (tenant_id, community_id, created_at) VALUES ('dangling', 'gone', 0)");
            for (var i = 0; i < 9; i++)
            {
                await c.ExecuteAsync("INSERT INTO tenant_aliases (tenant_id, community_id, created_at) VALUES (@from, @to, 0)",
                    new { from = $"deep{i}", to = i == 8 ? "c2" : $"deep{i + 1}" });
            }
        }

        Assert.Null(await store.FindForTenantAsync("dangling", ct));
        Assert.Equal("c2", await store.ResolveTenantAsync("deep1", ct)); // 8 hops: the longest chain followed
        Assert.Null(await store.ResolveTenantAsync("deep0", ct)); // 9 hops: too long
    }

    /// <summary>
    /// The invoke path reuses a resolved tenant for at most <see cref="CommunityStore.TenantCacheTtl"/>: writes through the
    /// store are seen at once, writes from elsewhere within the TTL, and a miss is never remembered.
    /// </summary>
    [Fact]
    public async Task Resolved_tenants_are_reused_briefly_and_writes_through_the_store_are_seen_at_once()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var db = new Database(TestStorage.Options("sqlite", "freeside"));
        await new Migrator(db).ApplyAsync(Migrator.FromAssembly(typeof(Database).Assembly, db.Engine).Concat(Migrator.FromAssembly(typeof(FreesideService).Assembly, db.Engine)), ct);
        var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        var store = new CommunityStore(db, time);
        var elsewhere = new CommunityStore(db, time); // another replica, or the CLI
        Assert.Null(await store.FindForTenantAsync("t", ct));
        await elsewhere.UpsertAsync("c1", "One", Tier.Free, 100, ct);
        await elsewhere.SetAliasAsync("t", "c1", ct);
        Assert.Equal(Tier.Free, (await store.FindForTenantAsync("t", ct))!.Tier); // the earlier miss was not cached

        await elsewhere.UpsertAsync("c1", "One", Tier.Pro, 100, ct);
        Assert.Equal(Tier.Free, (await store.FindForTenantAsync("t", ct))!.Tier); // reused within the TTL
        time.Advance(CommunityStore.TenantCacheTtl);
        Assert.Equal(Tier.Pro, (await store.FindForTenantAsync("t", ct))!.Tier); // seen once the TTL has passed

        await store.UpsertAsync("c1", "One", Tier.Enterprise, 100, ct);
        Assert.Equal(Tier.Enterprise, (await store.FindForTenantAsync("t", ct))!.Tier); // its own write: at once
    }
}
