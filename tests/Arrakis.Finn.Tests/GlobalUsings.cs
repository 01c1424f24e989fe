global using Arrakis.Testing;
global using Microsoft.Extensions.Configuration;
global using Xunit;

[assembly: AssemblyFixture(typeof(Arrakis.Testing.CreatedSchemaCleanup))]
