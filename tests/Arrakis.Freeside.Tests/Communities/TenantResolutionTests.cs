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
}
