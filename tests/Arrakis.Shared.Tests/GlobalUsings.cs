global using Arrakis.Testing;
global using Microsoft.Extensions.Configuration;
global using Xunit;
