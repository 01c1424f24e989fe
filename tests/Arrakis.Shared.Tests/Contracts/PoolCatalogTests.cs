using Arrakis.Shared.Contracts;

namespace Arrakis.Shared.Tests.Contracts;

public sealed class PoolCatalogTests
{
    static PoolCatalog Catalog(Dictionary<string, string?> settings) =>
        PoolCatalog.FromConfiguration(new ConfigurationBuilder().AddInMemoryCollection(settings).Build());

    /// <summary>
    /// docs/providers.md: freeside and finn bind <c>TierPools</c> for tier access. The binder appended a configured list
    /// to the default one, so <c>Pools__TierPools__pro__0=cheap</c> left pro with cheap, fast-code and reviewer: a pool
    /// could never be taken away from a tier.
    /// </summary>
    [Fact]
    public void A_configured_tier_list_replaces_the_default_pools_of_that_tier()
    {
        var catalog = Catalog(new()
        {
            ["Pools:TierPools:pro:0"] = "cheap",
            ["Pools:TierPools:Enterprise:0"] = "reasoning",
            ["Pools:TierPools:Enterprise:1"] = "cheap",
            ["Pools:DefaultPool:pro"] = "cheap",
            ["Pools:DefaultPool:enterprise"] = "reasoning",
        });

        Assert.Equal(["cheap"], catalog.TierPools["pro"]);
        Assert.True(catalog.TierAllows(Tier.Pro, "cheap"));
        Assert.False(catalog.TierAllows(Tier.Pro, "fast-code"));
        Assert.False(catalog.TierAllows(Tier.Pro, "reviewer"));
        Assert.Equal(["reasoning", "cheap"], catalog.TierPools["enterprise"]);
        Assert.False(catalog.TierAllows(Tier.Enterprise, "architect"));
        Assert.Equal(["cheap"], catalog.TierPools["free"]); // a tier the configuration does not name keeps its defaults
    }

    /// <summary>
    /// A tier's list that leaves out the tier's default pool (docs/providers.md's own <c>Pools__TierPools__pro__0=cheap</c>,
    /// with pro's default still fast-code) made every pro call that names no model a 402 TIER_UPGRADE_REQUIRED ("needs the
    /// enterprise tier"); a list naming a pool that does not exist gave the tier nothing. Both services build the catalog
    /// here, so both refuse such a configuration at start-up, saying which setting to change.
    /// </summary>
    [Fact]
    public void A_tier_list_without_its_default_pool_or_with_an_unknown_pool_is_refused_at_start_up()
    {
        var withoutDefault = Assert.Throws<Microsoft.Extensions.Options.OptionsValidationException>(() => Catalog(new() { ["Pools:TierPools:pro:0"] = "cheap" }));
        Assert.Contains("Pools:DefaultPool:pro is 'fast-code', which Pools:TierPools:pro does not include (cheap)", withoutDefault.Message, StringComparison.Ordinal);

        var unknown = Assert.Throws<Microsoft.Extensions.Options.OptionsValidationException>(() => Catalog(new()
        {
            ["Pools:TierPools:free:0"] = "cheap",
            ["Pools:TierPools:free:1"] = "chaep",
        }));
        Assert.Contains("Pools:TierPools:free names pool 'chaep', which does not exist", unknown.Message, StringComparison.Ordinal);

        // Moving the default along with the list is a valid configuration: pro's calls without a model run cheap.
        var moved = Catalog(new() { ["Pools:TierPools:pro:0"] = "cheap", ["Pools:DefaultPool:pro"] = "cheap" });
        Assert.Equal("cheap", moved.DefaultPoolFor(Tier.Pro));
        Assert.True(moved.TierAllows(Tier.Pro, moved.DefaultPoolFor(Tier.Pro)));
    }

    /// <summary>
    /// A model id dixie cannot keep a rating under (over 128 characters, or padded with spaces) lost every quality rating
    /// of that model, agent score included (dixie answered 400 and the event went dead in freeside's outbox); both
    /// services now refuse such a configuration at start-up, naming the setting. A long vendor model name stays allowed.
    /// </summary>
    [Fact]
    public void A_model_or_pool_id_that_ratings_cannot_name_is_refused_at_start_up()
    {
        var tooLong = Assert.Throws<Microsoft.Extensions.Options.OptionsValidationException>(() => Catalog(new() { ["Pools:Pools:cheap:Models:0:Id"] = new string('m', 129) }));
        Assert.Contains("Pools:Pools:cheap:Models has a model Id", tooLong.Message, StringComparison.Ordinal);
        var padded = Assert.Throws<Microsoft.Extensions.Options.OptionsValidationException>(() => Catalog(new() { ["Pools:Pools:cheap:Models:0:Id"] = " local-mini-a" }));
        Assert.Contains("padded with spaces", padded.Message, StringComparison.Ordinal);
        var longPool = Assert.Throws<Microsoft.Extensions.Options.OptionsValidationException>(() => Catalog(new()
        {
            [$"Pools:Pools:{new string('p', 65)}:Models:0:Id"] = "m",
        }));
        Assert.Contains("pool id", longPool.Message, StringComparison.Ordinal);

        var fits = Catalog(new() { ["Pools:Pools:cheap:Models:0:Id"] = new string('m', 128), ["Pools:Pools:cheap:Models:0:VendorModel"] = new string('v', 300) });
        Assert.Equal(128, Assert.Single(fits.Pools["cheap"].Models).Id.Length);
    }

    /// <summary>freeside's catalog (the same call) sees a pool's configured models as finn does, in index order.</summary>
    [Fact]
    public void A_configured_models_list_replaces_the_default_candidates_for_both_services()
    {
        var catalog = Catalog(new()
        {
            ["Pools:Pools:cheap:Models:1:Id"] = "local-mini-a",
            ["Pools:Pools:cheap:Models:0:Id"] = "gpt-4o-mini",
            ["Pools:Pools:cheap:Models:0:Provider"] = "openai",
            ["Pools:Pools:cheap:OutputMicroPerMillion"] = "700000",
        });

        Assert.Equal(["gpt-4o-mini", "local-mini-a"], catalog.Pools["cheap"].Models.Select(m => m.Id));
        Assert.Equal(["gpt-4o-mini", "local-mini-a"], catalog.Pools["cheap"].Models.Select(m => m.VendorModel));
        Assert.Equal(700_000, catalog.Pools["cheap"].OutputMicroPerMillion);
        Assert.Equal(150_000, catalog.Pools["cheap"].InputMicroPerMillion);
        Assert.Equal(["local-coder"], catalog.Pools["fast-code"].Models.Select(m => m.Id));
    }
}
