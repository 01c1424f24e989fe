namespace Arrakis.Shared.Tests.Deploy;

/// <summary>Runs promtool over deploy/prometheus: the rules load, and each G-9 alert fires (and resolves) in its window.</summary>
public sealed class PromtoolTests
{
    [Fact]
    public void The_alert_rules_pass_their_promtool_unit_tests()
    {
        var promtool = DeployFiles.RequireTool("promtool", "/usr/bin/promtool");
        var dir = Path.Combine(DeployFiles.Root, "deploy", "prometheus");

        var check = DeployFiles.Run(promtool, "check rules alerts.yml", dir);
        Assert.True(check.Code == 0, check.Stdout + check.Stderr);
        Assert.Contains("SUCCESS: 7 rules found", check.Stdout + check.Stderr);

        var config = DeployFiles.Run(promtool, "check config prometheus.yml", dir);
        Assert.True(config.Code == 0, config.Stdout + config.Stderr);

        var test = DeployFiles.Run(promtool, "test rules alerts_test.yml", dir);
        Assert.True(test.Code == 0, test.Stdout + test.Stderr);
        Assert.Contains("SUCCESS", test.Stdout + test.Stderr);

        var tests = File.ReadAllText(Path.Combine(dir, "alerts_test.yml"));
        foreach (var alert in new[] { "ArrakisCpuHigh", "ArrakisMemoryHigh", "ArrakisBudgetOverspend", "ArrakisConservationViolation", "ArrakisJwtValidationFailureSpike", "ArrakisInvokeLatencyP99High", "ArrakisServiceDown" })
        {
            Assert.Contains("alertname: " + alert, tests);
        }
    }
}
