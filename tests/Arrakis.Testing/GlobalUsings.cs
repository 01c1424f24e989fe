global using Microsoft.Extensions.Configuration;
global using Xunit;
