using Arrakis.Freeside.Communities;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Storage;

namespace Arrakis.Freeside.Tests.Communities;

public sealed class AgentValidationTests
{
    const string Contract = "0x0000000000000000000000000000000000000001";

    /// <summary><c>$</c> matched before a final newline, so "0x…\n" and "42\n" were stored as an agent's NFT.</summary>
    [Theory]
    [InlineData(Contract + "\n", "42", "nftContract")]
    [InlineData(Contract, "42\n", "nftTokenId")]
    [InlineData("0x01", "42", "nftContract")]
    [InlineData(Contract, "4 2", "nftTokenId")]
    public async Task An_nft_contract_or_token_id_that_is_not_exactly_the_shape_is_refused_naming_its_field(string contract, string token, string field)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var db = new Database(TestStorage.Options("sqlite", "freeside"));
        await new Migrator(db).ApplyAsync(Migrator.FromAssembly(typeof(Database).Assembly, db.Engine).Concat(Migrator.FromAssembly(typeof(FreesideService).Assembly, db.Engine)), ct);
        var store = new CommunityStore(db, TimeProvider.System);
        Assert.Equal(CommunityStatus.Created, (await store.UpsertAsync("c1", "One", Tier.Free, 100, ct)).Status);

        var refused = await store.UpsertAgentAsync(new Agent("agent-1", "Agent", "c1", contract, token, 0), ct);
        Assert.Equal((CommunityStatus.Invalid, field), (refused.Status, refused.Field));
        Assert.Contains(field, refused.Detail, StringComparison.Ordinal);
        Assert.Equal(CommunityStatus.Updated, (await store.UpsertAgentAsync(new Agent("agent-1", "Agent", "c1", Contract, "42", 0), ct)).Status);
    }
    /// <summary>
    /// A NUL in a name reached PostgreSQL, which refuses it (500); a newline or a 10,000-character agent name was stored.
    /// Both names are now 1-200 printable characters, and the row is unchanged.
    /// </summary>
    [Theory]
    [MemberData(nameof(TestStorage.Engines), MemberType = typeof(TestStorage))]
    public async Task Community_and_agent_names_are_printable_text(string engine)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var db = new Database(TestStorage.Options(engine, "freeside"));
        await new Migrator(db).ApplyAsync(Migrator.FromAssembly(typeof(Database).Assembly, db.Engine).Concat(Migrator.FromAssembly(typeof(FreesideService).Assembly, db.Engine)), ct);
        var store = new CommunityStore(db, TimeProvider.System);
        Assert.Equal(CommunityStatus.Created, (await store.UpsertAsync("c1", "One", Tier.Free, 100, ct)).Status);
        Assert.Equal(CommunityStatus.Updated, (await store.UpsertAgentAsync(new Agent("agent-1", "Agent", "c1", Contract, "42", 0), ct)).Status);

        foreach (var name in new[] { "a\0b", "two\nlines", "\ud800", new string('n', 201), " " })
        {
            var community = await store.UpsertAsync("c1", name, Tier.Free, 100, ct);
            Assert.Equal((CommunityStatus.Invalid, "name"), (community.Status, community.Field));
            var agent = await store.UpsertAgentAsync(new Agent("agent-1", name, "c1", Contract, "42", 0), ct);
            Assert.Equal((CommunityStatus.Invalid, "name"), (agent.Status, agent.Field));
        }

        Assert.Equal("One", (await store.FindAsync("c1", ct))!.Name);
        Assert.Equal("Agent", (await store.FindAgentAsync("agent-1", ct))!.Name);
        Assert.Equal(CommunityStatus.Updated, (await store.UpsertAgentAsync(new Agent("agent-1", "Ägent 😀", "c1", Contract, "42", 0), ct)).Status);
    }
}
