namespace Arrakis.Testing;

/// <summary>
/// An assembly fixture (<c>[assembly: AssemblyFixture(typeof(CreatedSchemaCleanup))]</c> in each test project): when
/// the assembly's tests have all finished, it drops the PostgreSQL schemas they created. Each assembly drops only its own,
/// so test projects running side by side do not pull schemas from under each other.
/// </summary>
public sealed class CreatedSchemaCleanup : IAsyncDisposable
{
    public async ValueTask DisposeAsync() => await TestStorage.DropCreatedSchemasAsync();
}
