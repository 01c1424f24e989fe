using System.Text.Json;
using System.Text.RegularExpressions;
using Arrakis.Shared.Hosting;

namespace Arrakis.Shared.Tests.Deploy;

/// <summary>
/// deploy/terraform cannot be planned here (no terraform binary, no AWS), so these tests parse the HCL with
/// @cdktf/hcl2json (tools/terraform-check) and check its structure against the code it deploys.
/// </summary>
public sealed class TerraformStructureTests
{
    static string Str(JsonElement e, string property) => e.GetProperty(property).GetString()!;

    static List<string> ForEachKeys(JsonElement body)
    {
        var raw = body.GetProperty("for_each").GetString()!;
        if (raw.Contains("local.ports", StringComparison.Ordinal) || raw.Contains("local.sizes", StringComparison.Ordinal))
        {
            return ["freeside", "finn", "dixie"];
        }

        if (raw.Contains("local.alarm_service_names", StringComparison.Ordinal))
        {
            return ["freeside", "finn", "dixie"];
        }

        if (raw.Contains("local.keyring_services", StringComparison.Ordinal))
        {
            return Regex.Matches(DeployFiles.Locals()["keyring_services"].GetString()!, "\\\\?\"([a-z-]+)\\\\?\"").Select(m => m.Groups[1].Value).ToList();
        }

        return Regex.Matches(raw, "\"([a-z-]+)\"").Select(m => m.Groups[1].Value).ToList();
    }

    [Fact]
    public void Every_required_resource_exists()
    {
        Assert.Equal("terraform-aws-modules/vpc/aws", DeployFiles.Hcl().GetProperty("network.tf").GetProperty("module").GetProperty("vpc")[0].GetProperty("source").GetString());

        var alb = DeployFiles.Resource("aws_lb", "public");
        Assert.False(alb.GetProperty("internal").GetBoolean());
        var https = DeployFiles.Resource("aws_lb_listener", "https");
        Assert.Contains("aws_lb_target_group.freeside", https.GetProperty("default_action")[0].GetProperty("target_group_arn").GetString());
        var hostRule = DeployFiles.Resource("aws_lb_listener_rule", "dixie_host");
        Assert.Contains("aws_lb_target_group.dixie", hostRule.GetProperty("action")[0].GetProperty("target_group_arn").GetString());
        Assert.Equal("${var.dixie_host}", hostRule.GetProperty("condition")[0].GetProperty("host_header")[0].GetProperty("values")[0].GetString());
        Assert.DoesNotContain(DeployFiles.Resources("aws_lb_target_group"), t => t.Name == "finn");

        Assert.Single(DeployFiles.Resources("aws_ecs_cluster"));
        foreach (var service in new[] { "freeside", "finn", "dixie" })
        {
            var svc = DeployFiles.Resource("aws_ecs_service", service);
            Assert.Equal("FARGATE", Str(svc, "launch_type"));
            Assert.Equal(service, Str(svc, "name"));
            Assert.Contains($"aws_service_discovery_service.{service}.arn", svc.GetProperty("service_registries")[0].GetProperty("registry_arn").GetString());
            Assert.Equal(service != "finn", svc.TryGetProperty("load_balancer", out _));
        }

        var migrate = DeployFiles.Resource("aws_ecs_task_definition", "migrate");
        var containers = migrate.GetProperty("container_definitions").GetString()!;
        Assert.Matches("command\\s*=\\s*\\[\"migrate\"\\]", containers);
        Assert.Contains("local.images[\"loa\"]", containers);
        foreach (var cs in new[] { "ConnectionStrings__Freeside", "ConnectionStrings__Finn", "ConnectionStrings__Dixie" })
        {
            Assert.Contains(cs, containers);
        }

        Assert.Equal("postgres", Str(DeployFiles.Resource("aws_db_instance", "main"), "engine"));
        Assert.False(DeployFiles.Resource("aws_db_instance", "main").GetProperty("publicly_accessible").GetBoolean());
        Assert.Equal("redis", Str(DeployFiles.Resource("aws_elasticache_replication_group", "main"), "engine"));
        Assert.Equal(["freeside", "finn", "dixie"], ForEachKeys(DeployFiles.Resource("aws_secretsmanager_secret", "database_url")));
        Assert.Equal(["freeside", "finn"], ForEachKeys(DeployFiles.Resource("aws_secretsmanager_secret", "keyring_master_key")));
        Assert.False(DeployFiles.Resources("aws_secretsmanager_secret_version").Any(v => v.Name.Contains("keyring", StringComparison.Ordinal)), "master keys must not be written into state");

        var logGroups = ForEachKeys(DeployFiles.Resource("aws_cloudwatch_log_group", "service"));
        Assert.Equal(["freeside", "finn", "dixie", "migrate"], logGroups);
        Assert.Equal(["overview", "service-health", "economic-health", "gateway-proxy"], ForEachKeys(DeployFiles.Resource("aws_cloudwatch_dashboard", "g9")));
        Assert.Equal("arrakis-staging-alerts", DeployFiles.Resolve(Str(DeployFiles.Resource("aws_sns_topic", "alerts"), "name")));
        Assert.Equal("ECSServiceAverageCPUUtilization", DeployFiles.Resource("aws_appautoscaling_policy", "cpu").GetProperty("target_tracking_scaling_policy_configuration")[0]
            .GetProperty("predefined_metric_specification")[0].GetProperty("predefined_metric_type").GetString());
        Assert.Equal(["freeside", "finn", "dixie", "loa"], ForEachKeys(DeployFiles.Resource("aws_ecr_repository", "images")));
    }

    [Fact]
    public void The_names_the_deploy_pipeline_uses_are_the_ones_terraform_creates()
    {
        // scripts/staging-deploy-all.sh (its calls are pinned by DeployScriptTests in Arrakis.Cli.Tests) uses: cluster
        // <prefix>, ECR repositories <prefix>/<name>, task-definition families <prefix>-<service>, the migration task
        // <prefix>-migrate with a container named migrate, four outputs, and the Dockerfile's build arguments and targets.
        Assert.Equal("arrakis-staging", DeployFiles.Resolve(Str(DeployFiles.Resource("aws_ecs_cluster", "main"), "name")));
        var repository = Str(DeployFiles.Resource("aws_ecr_repository", "images"), "name");
        Assert.Equal("arrakis-staging/freeside", DeployFiles.Resolve(repository.Replace("${each.key}", "freeside", StringComparison.Ordinal)));
        var family = Str(DeployFiles.Resource("aws_ecs_task_definition", "service"), "family");
        Assert.Equal("arrakis-staging-dixie", DeployFiles.Resolve(family.Replace("${each.key}", "dixie", StringComparison.Ordinal)));
        var migrate = DeployFiles.Resource("aws_ecs_task_definition", "migrate");
        Assert.Equal("arrakis-staging-migrate", DeployFiles.Resolve(Str(migrate, "family")));
        Assert.Matches("name\\s*=\\s*\"migrate\"", migrate.GetProperty("container_definitions").GetString()!);
        var outputs = DeployFiles.Hcl().GetProperty("outputs.tf").GetProperty("output");
        foreach (var output in new[] { "cluster_name", "migrate_task_definition", "private_subnets", "services_security_group" })
        {
            Assert.True(outputs.TryGetProperty(output, out _), $"output {output} is missing");
        }

        var dockerfile = File.ReadAllText(Path.Combine(DeployFiles.Root, "deploy", "docker", "Dockerfile"));
        foreach (var line in new[] { "ARG PROJECT", "ARG APP", "ARG PORT=", "ARG HEALTH_PATH=", " AS service", " AS cli" })
        {
            Assert.Contains(line, dockerfile, StringComparison.Ordinal);
        }
    }

    /// <summary>
    /// The S3 backend's key was fixed, so ENVIRONMENT=prod planned against staging's state (to rename every staging
    /// resource arrakis-prod-*). The pipeline passes a key per environment; staging's is the one the state has always had.
    /// </summary>
    [Fact]
    public void Each_environment_keeps_its_own_state_and_staging_keeps_its_key()
    {
        var backend = DeployFiles.Hcl().GetProperty("versions.tf").GetProperty("terraform")[0].GetProperty("backend").GetProperty("s3")[0];
        var script = File.ReadAllText(Path.Combine(DeployFiles.Root, "scripts", "staging-deploy-all.sh"));
        var key = Regex.Match(script, "TF_STATE_KEY=\"([^\"]+)\"");
        Assert.True(key.Success, "scripts/staging-deploy-all.sh passes no state key: every environment shares " + Str(backend, "key"));
        Assert.Contains("$ENVIRONMENT", key.Groups[1].Value, StringComparison.Ordinal);
        Assert.Contains("-backend-config=\"key=$TF_STATE_KEY\"", script, StringComparison.Ordinal);
        Assert.Equal(Str(backend, "key"), key.Groups[1].Value.Replace("$ENVIRONMENT", DeployFiles.Environment, StringComparison.Ordinal));
        Assert.Equal("arrakis/staging/terraform.tfstate", Str(backend, "key"));
    }

    [Fact]
    public void Settings_whose_code_defaults_are_for_development_are_set_for_aws()
    {
        // x402: the code's PayTo falls back to anvil dev account #9 (X402Options.TestPayTo, a public test key) and its
        // RpcUrl to a local node. Freeside's task sets both, from a required variable and a secret.
        var containers = DeployFiles.Resource("aws_ecs_task_definition", "service").GetProperty("container_definitions").GetString()!;
        Assert.Matches("each\\.key == \"freeside\" \\? \\[[^\\]]*name = \"X402__PayTo\", value = var\\.x402_pay_to", containers);
        Assert.Matches("each\\.key == \"freeside\" \\? \\[\\{ name = \"X402__RpcUrl\", valueFrom = aws_secretsmanager_secret\\.x402_rpc_url\\.arn", containers);
        Assert.Null(DeployFiles.VariableDefault("x402_pay_to"));
        Assert.Null(DeployFiles.VariableDefault("x402_rpc_url"));
        var payTo = DeployFiles.Hcl().GetProperty("variables.tf").GetProperty("variable").GetProperty("x402_pay_to")[0];
        Assert.Contains("0xa0ee7a142d267c1f36714e4a8f75612f20a79720", payTo.GetProperty("validation")[0].GetProperty("condition").GetString(), StringComparison.Ordinal);
        var readable = DeployFiles.Hcl().GetProperty("iam.tf").GetProperty("data").GetProperty("aws_iam_policy_document").GetProperty("read_secrets")[0]
            .GetProperty("statement")[0].GetProperty("resources").GetString()!;
        Assert.Contains("aws_secretsmanager_secret.x402_rpc_url.arn", readable, StringComparison.Ordinal);

        // The ALB sends dixie's host to dixie: the default host is the one the deploy pipeline's gate calls.
        var script = File.ReadAllText(Path.Combine(DeployFiles.Root, "scripts", "staging-deploy-all.sh"));
        var dixieUrl = Regex.Match(script, "DIXIE_URL=\"\\$\\{DIXIE_URL:-https://([^/}\"]+)\\}\"").Groups[1].Value;
        Assert.Equal(dixieUrl, DeployFiles.VariableDefault("dixie_host"));
        Assert.Contains("\"dixie_host=$DIXIE_HOST\"", script, StringComparison.Ordinal);
    }

    [Fact]
    public void Each_keyring_has_a_one_off_loa_keys_task_with_its_own_secrets()
    {
        // scripts/loa-ecs.sh runs <prefix>-keys-<service> with the container "loa" and reads its log stream keys/loa/<task>.
        var keys = DeployFiles.Resource("aws_ecs_task_definition", "keys");
        Assert.Equal(["freeside", "finn"], ForEachKeys(keys));
        Assert.Equal("arrakis-staging-keys-finn", DeployFiles.Resolve(Str(keys, "family").Replace("${each.key}", "finn", StringComparison.Ordinal)));
        var container = keys.GetProperty("container_definitions").GetString()!;
        Assert.Matches("name\\s*=\\s*\"loa\"", container);
        Assert.Contains("local.images[\"loa\"]", container, StringComparison.Ordinal);
        Assert.Contains("valueFrom = aws_secretsmanager_secret.database_url[each.key].arn", container, StringComparison.Ordinal);
        Assert.Contains("valueFrom = aws_secretsmanager_secret.keyring_master_key[each.key].arn", container, StringComparison.Ordinal);
        Assert.Matches("awslogs-group\\s*=\\s*aws_cloudwatch_log_group\\.service\\[each\\.key\\]\\.name", container);
        Assert.Matches("awslogs-stream-prefix\\s*=\\s*\"keys\"", container);
        var script = File.ReadAllText(Path.Combine(DeployFiles.Root, "scripts", "loa-ecs.sh"));
        Assert.Contains("--task-definition \"$PREFIX-keys-$service\"", script, StringComparison.Ordinal);
        Assert.Contains("keys/loa/", script, StringComparison.Ordinal);
    }

    [Fact]
    public void The_public_listener_does_not_serve_metrics()
    {
        var rule = DeployFiles.Resource("aws_lb_listener_rule", "metrics_internal");
        Assert.True(rule.GetProperty("priority").GetInt32() < DeployFiles.Resource("aws_lb_listener_rule", "dixie_host").GetProperty("priority").GetInt32());
        Assert.Equal(["/metrics", "/metrics/*"], rule.GetProperty("condition")[0].GetProperty("path_pattern")[0].GetProperty("values").EnumerateArray().Select(v => v.GetString()));
        var response = rule.GetProperty("action")[0].GetProperty("fixed_response")[0];
        Assert.Equal("404", response.GetProperty("status_code").GetString());
        Assert.Equal("NOT_FOUND", JsonDocument.Parse(response.GetProperty("message_body").GetString()!).RootElement.GetProperty("error").GetString());
    }

    /// <summary>
    /// G-1 "Redis accessible and no evictions": Redis holds the token replay cache and the rate-limit windows, every key
    /// with a TTL, which the default ElastiCache policy (volatile-lru) evicts first under memory pressure. The replication
    /// group must use a parameter group of its engine's family with maxmemory-policy noeviction.
    /// </summary>
    [Fact]
    public void Redis_never_evicts_the_replay_cache()
    {
        var redis = DeployFiles.Resource("aws_elasticache_replication_group", "main");
        Assert.True(redis.TryGetProperty("parameter_group_name", out var groupRef), "the replication group uses the default parameter group (maxmemory-policy volatile-lru)");
        var name = Regex.Match(groupRef.GetString()!, @"^\$\{aws_elasticache_parameter_group\.(\w+)\.name\}$");
        Assert.True(name.Success, "parameter_group_name should reference a parameter group defined here: " + groupRef.GetString());
        var group = DeployFiles.Resource("aws_elasticache_parameter_group", name.Groups[1].Value);
        var major = Str(redis, "engine_version").Split('.')[0];
        Assert.Equal(Str(redis, "engine") + major, Str(group, "family"));
        var policy = Assert.Single(group.GetProperty("parameter").EnumerateArray(), p => Str(p, "name") == "maxmemory-policy");
        Assert.Equal("noeviction", Str(policy, "value"));
    }

    [Fact]
    public void Every_replica_pool_fits_the_database_at_the_autoscaling_maximum()
    {
        // RDS PostgreSQL: max_connections = DBInstanceClassMemory / 9531392, and the instance keeps some memory for
        // itself, so count 90 % of RAM and 3 connections reserved for superusers.
        var ramGiB = new Dictionary<string, double>
        {
            ["db.t3.micro"] = 1, ["db.t3.small"] = 2, ["db.t3.medium"] = 4, ["db.t3.large"] = 8,
            ["db.t4g.micro"] = 1, ["db.t4g.small"] = 2, ["db.t4g.medium"] = 4, ["db.t4g.large"] = 8,
        };
        var instance = DeployFiles.VariableDefault("db_instance_class")!;
        Assert.True(ramGiB.ContainsKey(instance), $"add {instance} to this table");
        var capacity = (int)(ramGiB[instance] * 0.9 * 1024 * 1024 * 1024 / 9531392) - 3;

        var pools = DeployFiles.Locals()["pool_sizes"];
        var sizes = DeployFiles.Locals()["sizes"];
        int Pools(string service) => pools.GetProperty(service).GetInt32() * sizes.GetProperty(service).GetProperty("max").GetInt32();
        var atMaximum = new[] { "freeside", "finn", "dixie" }.Sum(Pools);

        // A rollout starts the new tasks (up to deployment_maximum_percent of the count, ECS's default 200) before it
        // stops the old ones, whose pools stay open until then. scripts/staging-deploy-all.sh rolls freeside alone, then
        // finn and dixie (at once with --parallel).
        int Extra(string service)
        {
            var percent = DeployFiles.Resource("aws_ecs_service", service).TryGetProperty("deployment_maximum_percent", out var p) ? p.GetInt32() : 200;
            var max = sizes.GetProperty(service).GetProperty("max").GetInt32();
            return pools.GetProperty(service).GetInt32() * (max * percent / 100 - max);
        }

        var script = File.ReadAllText(Path.Combine(DeployFiles.Root, "scripts", "staging-deploy-all.sh"));
        Assert.Contains("if ! deploy_service freeside; then", script, StringComparison.Ordinal);
        Assert.Contains("deploy_service finn & finn_pid=$!\n    deploy_service dixie & dixie_pid=$!", script, StringComparison.Ordinal);
        var peak = atMaximum + Math.Max(Extra("freeside"), Extra("finn") + Extra("dixie"));
        const int OneOffTasks = 10; // the migration task's pool (or a loa keys task) and an operator's psql
        Assert.True(atMaximum + OneOffTasks <= capacity, $"{atMaximum} pooled connections at full scale + {OneOffTasks} > about {capacity} on {instance}");
        Assert.True(peak + OneOffTasks <= capacity, $"{peak} pooled connections while a service rolls at full scale + {OneOffTasks} > about {capacity} on {instance}");
        Assert.Contains("Maximum Pool Size=${local.pool_sizes[each.key]}", Str(DeployFiles.Resource("aws_secretsmanager_secret_version", "database_url"), "secret_string"), StringComparison.Ordinal);
    }

    [Fact]
    public void The_alarms_carry_the_checklist_names_and_fire_within_60_seconds_where_required()
    {
        var alarms = DeployFiles.Resources("aws_cloudwatch_metric_alarm");
        var names = new List<string>();
        foreach (var (_, body) in alarms)
        {
            var name = Str(body, "alarm_name");
            if (body.TryGetProperty("for_each", out _))
            {
                var map = DeployFiles.Locals()["alarm_service_names"];
                names.AddRange(map.EnumerateObject().Select(p => DeployFiles.Resolve(name.Replace("${each.value}", p.Value.GetString(), StringComparison.Ordinal))));
            }
            else
            {
                names.Add(DeployFiles.Resolve(name));
            }

            Assert.Contains("${local.alarm_actions}", body.GetProperty("alarm_actions").GetString());
        }

        string[] required =
        [
            "api-cpu-high", "api-memory-high", "dixie-cpu-high", "dixie-memory-high", "finn-cpu-high", "finn-memory-high",
            "agent-budget-overspend", "jwt-log-validation-failures", "jwt-validation-failure-spike", "conservation-log-violation",
            "conservation-guard-failure", "invoke-latency-p99", "api-health-check-failure", "dixie-health-check-failure",
            "rds-cpu-high", "alb-5xx-errors", "agent-redis-evictions", "payment-failure",
        ];
        foreach (var suffix in required)
        {
            Assert.Contains("arrakis-staging-" + suffix, names);
        }

        Assert.All(names, n => Assert.StartsWith("arrakis-staging-", n));
        foreach (var name in new[] { "ecs_cpu_high", "ecs_memory_high", "agent_budget_overspend", "conservation_guard_failure", "conservation_log_violation", "jwt_validation_failure_spike" })
        {
            var alarm = DeployFiles.Resource("aws_cloudwatch_metric_alarm", name);
            Assert.Equal(60, alarm.GetProperty("period").GetInt32());
            Assert.Equal(1, alarm.GetProperty("evaluation_periods").GetInt32());
        }

        var p99 = DeployFiles.Resource("aws_cloudwatch_metric_alarm", "invoke_latency_p99");
        Assert.Equal("p99", Str(p99, "extended_statistic"));
        Assert.Equal(10000, p99.GetProperty("threshold").GetInt32());
    }

    [Fact]
    public async Task Health_check_paths_are_the_services_real_routes()
    {
        var locals = DeployFiles.Locals();
        var paths = locals["health_paths"].EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!);
        Assert.Equal(paths["freeside"], DeployFiles.Resource("aws_lb_target_group", "freeside").GetProperty("health_check")[0].GetProperty("path").GetString());
        Assert.Equal(paths["dixie"], DeployFiles.Resource("aws_lb_target_group", "dixie").GetProperty("health_check")[0].GetProperty("path").GetString());
        var containers = DeployFiles.Resource("aws_ecs_task_definition", "service").GetProperty("container_definitions").GetString()!;
        Assert.Contains("local.health_paths[each.key]", containers);

        // ServiceEndpoints.Listen binds 127.0.0.1 unless ASPNETCORE_URLS is set: the tasks must set it to all interfaces.
        Assert.Matches("name\\s*=\\s*\"ASPNETCORE_URLS\",\\s*value\\s*=\\s*\"http://\\+:\\$\\{each\\.value\\}\"", containers);

        // The routes as the running services answer them.
        await using var platform = await Platform.StartAsync("sqlite");
        using var http = new HttpClient();
        var ct = TestContext.Current.CancellationToken;
        foreach (var (service, baseUrl) in new[] { ("freeside", platform.FreesideUrl), ("finn", platform.FinnUrl), ("dixie", platform.DixieUrl) })
        {
            using var response = await http.GetAsync(baseUrl.TrimEnd('/') + paths[service], ct);
            Assert.True((int)response.StatusCode == 200, $"{service} {paths[service]} answered {(int)response.StatusCode}");
            using var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync(ct));
            Assert.Equal(service, body.RootElement.GetProperty("service").GetString());
        }
    }

    static Dictionary<string, string> CommonEnvironment() => DeployFiles.Locals()["common_environment"].EnumerateArray()
        .ToDictionary(e => e.GetProperty("name").GetString()!, e => DeployFiles.Resolve(e.GetProperty("value").GetString()!));

    static int AlbIdleTimeoutSeconds()
    {
        Assert.True(DeployFiles.Resource("aws_lb", "public").TryGetProperty("idle_timeout", out var idle), "aws_lb.public keeps the ALB's default idle timeout, 60 s");
        return idle.GetInt32();
    }

    /// <summary>
    /// A call that does not stream sends nothing until it answers, so the ALB's idle timeout (60 s unless set) bounds it:
    /// a paid x402 invoke may wait for the facilitator's /verify, then finn, then /settle, each up to its own timeout,
    /// and must get freeside's JSON answer, not the ALB's HTML 504 with the call cut halfway. The ALB keeps idle
    /// connections to the tasks open that long too, so Kestrel must not close them first (a 502 for the next request).
    /// </summary>
    [Fact]
    public void The_load_balancer_waits_longer_than_freeside_s_slowest_answer()
    {
        var idle = AlbIdleTimeoutSeconds();
        var facilitator = new Arrakis.Freeside.Payments.X402Options().FacilitatorTimeoutSeconds;
        var slowest = facilitator + (int)Arrakis.Freeside.Identity.IdentitySetup.FinnTimeout.TotalSeconds + facilitator;
        Assert.True(idle > slowest, $"idle_timeout {idle} s must exceed /verify + finn + /settle = {slowest} s");

        var keepAlive = CommonEnvironment().TryGetValue("Kestrel__Limits__KeepAliveTimeout", out var configured)
            ? TimeSpan.Parse(configured, System.Globalization.CultureInfo.InvariantCulture)
            : new Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerLimits().KeepAliveTimeout;
        Assert.True(keepAlive > TimeSpan.FromSeconds(idle), $"Kestrel closes idle connections after {keepAlive}, before the ALB's {idle} s");
    }

    /// <summary>
    /// The ALB ends TLS and forwards HTTP with <c>X-Forwarded-Proto: https</c>; freeside names its x402 resource from the
    /// request's scheme. The task settings must make ASP.NET Core apply that header, or every 402 on staging offers
    /// <c>http://…/api/v1/x402/invoke</c>, a URL the public listener only redirects. Run with the tasks' own settings,
    /// which also shows the service reads the keep-alive setting under the name Terraform gives it.
    /// </summary>
    [Fact]
    public async Task Behind_the_load_balancer_the_x402_resource_is_the_https_url()
    {
        // The tasks' environment variables as the host reads them: an ASPNETCORE_ prefix dropped, "__" for ":".
        var settings = CommonEnvironment()
            .Where(e => (e.Key.StartsWith("ASPNETCORE_", StringComparison.Ordinal) && e.Key is not ("ASPNETCORE_URLS" or "ASPNETCORE_ENVIRONMENT")) || e.Key.StartsWith("Kestrel__", StringComparison.Ordinal))
            .ToDictionary(e => (e.Key.StartsWith("ASPNETCORE_", StringComparison.Ordinal) ? e.Key["ASPNETCORE_".Length..] : e.Key).Replace("__", ":", StringComparison.Ordinal), e => (string?)e.Value);
        Assert.Contains("FORWARDEDHEADERS_ENABLED", settings.Keys);

        await using var platform = await Platform.StartAsync("sqlite", settings);
        using var http = new HttpClient();
        using var request = new HttpRequestMessage(HttpMethod.Post, platform.FreesideUrl + "/api/v1/x402/invoke")
        {
            Content = new StringContent("""{"prompt":"behind the ALB","model":"cheap"}""", System.Text.Encoding.UTF8, "application/json"),
        };
        request.Headers.Add("X-Forwarded-Proto", "https");
        using var response = await http.SendAsync(request, TestContext.Current.CancellationToken);
        Assert.Equal(402, (int)response.StatusCode);
        using var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
        var host = new Uri(platform.FreesideUrl).Authority;
        Assert.Equal($"https://{host}/api/v1/x402/invoke", body.RootElement.GetProperty("accepts")[0].GetProperty("resource").GetString());

        var kestrel = Microsoft.Extensions.DependencyInjection.ServiceProviderServiceExtensions
            .GetRequiredService<Microsoft.Extensions.Options.IOptions<Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions>>(platform.Freeside.Services).Value;
        Assert.True(kestrel.Limits.KeepAliveTimeout > TimeSpan.FromSeconds(AlbIdleTimeoutSeconds()), $"freeside's Kestrel keep-alive is {kestrel.Limits.KeepAliveTimeout}");
    }

    /// <summary>
    /// A rollout (or a scale-in) takes each old freeside or dixie task off the ALB and waits deregistration_delay for
    /// its calls to finish before ECS sends SIGTERM; stopTimeout later, SIGKILL. The target groups kept AWS's 300 s,
    /// longer than any call that does not stream can last, so every rollout waited 5 minutes of the pipeline's
    /// DEPLOY_TIMEOUT_SECONDS. finn is not on the ALB: SIGTERM comes while freeside's calls to it (up to 60 s) run, and
    /// the host's default 30 s shutdown cut them.
    /// </summary>
    [Fact]
    public async Task A_rollout_lets_calls_in_flight_finish_and_fits_the_deploy_timeout()
    {
        var idle = AlbIdleTimeoutSeconds();
        var facilitator = new Arrakis.Freeside.Payments.X402Options().FacilitatorTimeoutSeconds;
        var slowest = facilitator + (int)Arrakis.Freeside.Identity.IdentitySetup.FinnTimeout.TotalSeconds + facilitator;
        var delays = new[] { "freeside", "dixie" }.Select(service =>
        {
            var group = DeployFiles.Resource("aws_lb_target_group", service);
            Assert.True(group.TryGetProperty("deregistration_delay", out var delay), $"aws_lb_target_group.{service} keeps AWS's deregistration delay, 300 s");
            var seconds = int.Parse(DeployFiles.Resolve(delay.ToString()), System.Globalization.CultureInfo.InvariantCulture);
            // Longer than the slowest call that does not stream; no longer than the ALB lets a silent call live, past
            // which only streams are left, and they are cut when the delay ends however long it is.
            Assert.True(seconds > slowest && seconds <= idle, $"{service}'s deregistration delay {seconds} s: must exceed {slowest} s and not exceed the idle timeout {idle} s");
            return seconds;
        }).ToList();

        // SIGTERM: the host lets calls in progress finish for shutdownTimeoutSeconds, before ECS's SIGKILL.
        Assert.True(CommonEnvironment().TryGetValue("shutdownTimeoutSeconds", out var configured), "the tasks keep .NET's 30 s shutdown timeout");
        var shutdown = int.Parse(configured, System.Globalization.CultureInfo.InvariantCulture);
        var containers = DeployFiles.Resource("aws_ecs_task_definition", "service").GetProperty("container_definitions").GetString()!;
        var stopLocal = Regex.Match(containers, @"stopTimeout\s*=\s*local\.(\w+)");
        Assert.True(stopLocal.Success, "the services' containers keep ECS's stopTimeout, 30 s");
        var stop = DeployFiles.Locals()[stopLocal.Groups[1].Value].GetInt32();
        Assert.True(shutdown > Arrakis.Freeside.Identity.IdentitySetup.FinnTimeout.TotalSeconds, $"shutdown timeout {shutdown} s: freeside's calls to finn take up to 60 s");
        Assert.True(stop > shutdown && stop <= 120, $"stopTimeout {stop} s must exceed the shutdown timeout {shutdown} s (Fargate allows up to 120 s)");

        // The host reads the setting under the name the tasks give it.
        await using (var platform = await Platform.StartAsync("sqlite", new Dictionary<string, string?> { ["shutdownTimeoutSeconds"] = configured }))
        {
            var options = Microsoft.Extensions.DependencyInjection.ServiceProviderServiceExtensions
                .GetRequiredService<Microsoft.Extensions.Options.IOptions<Microsoft.Extensions.Hosting.HostOptions>>(platform.Finn.Services).Value;
            Assert.Equal(TimeSpan.FromSeconds(shutdown), options.ShutdownTimeout);
        }

        // One service's rollout, at worst: Fargate starts the new tasks (allow 2 minutes to place them and pull the
        // image) and the ALB finds them healthy, the old ones drain, then stop; `aws ecs wait services-stable` polls
        // every 15 s. The pipeline gives each service DEPLOY_TIMEOUT_SECONDS, which cannot usefully exceed 600 s:
        // the waiter itself gives up after 40 polls.
        var check = DeployFiles.Resource("aws_lb_target_group", "freeside").GetProperty("health_check")[0];
        var healthy = check.GetProperty("healthy_threshold").GetInt32() * check.GetProperty("interval").GetInt32();
        var worst = 120 + healthy + delays.Max() + stop + 15;
        var script = File.ReadAllText(Path.Combine(DeployFiles.Root, "scripts", "staging-deploy-all.sh"));
        var timeout = int.Parse(Regex.Match(script, @"DEPLOY_TIMEOUT_SECONDS=""\$\{DEPLOY_TIMEOUT_SECONDS:-(\d+)\}""").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(worst <= timeout && timeout <= 600, $"a rollout may take {worst} s; DEPLOY_TIMEOUT_SECONDS is {timeout} s");
    }

    /// <summary>
    /// ECS refuses to create a service whose target group no listener forwards to yet. dixie's target group is attached
    /// by the host rule, not by the listener its service depended on, so a first apply could create the service first.
    /// </summary>
    [Fact]
    public void Each_service_waits_for_the_listener_or_rule_that_forwards_to_its_target_group()
    {
        var forwards = new List<(string Address, string Group)>();
        foreach (var (name, body) in DeployFiles.Resources("aws_lb_listener"))
        {
            forwards.AddRange(body.GetProperty("default_action").EnumerateArray().Where(a => a.TryGetProperty("target_group_arn", out _))
                .Select(a => ($"aws_lb_listener.{name}", a.GetProperty("target_group_arn").GetString()!)));
        }

        foreach (var (name, body) in DeployFiles.Resources("aws_lb_listener_rule"))
        {
            forwards.AddRange(body.GetProperty("action").EnumerateArray().Where(a => a.TryGetProperty("target_group_arn", out _))
                .Select(a => ($"aws_lb_listener_rule.{name}", a.GetProperty("target_group_arn").GetString()!)));
        }

        foreach (var service in new[] { "freeside", "dixie" })
        {
            var body = DeployFiles.Resource("aws_ecs_service", service);
            var group = body.GetProperty("load_balancer")[0].GetProperty("target_group_arn").GetString()!;
            var attaching = forwards.Where(f => f.Group == group).Select(f => f.Address).ToList();
            Assert.NotEmpty(attaching);
            var dependsOn = body.TryGetProperty("depends_on", out var d) ? d.EnumerateArray().Select(e => e.GetString()!.Trim('$', '{', '}')).ToList() : [];
            Assert.True(attaching.All(dependsOn.Contains), $"aws_ecs_service.{service} depends on [{string.Join(", ", dependsOn)}], not on {string.Join(", ", attaching)}, which forwards to {group}");
        }
    }

    /// <summary>
    /// Every name is built from arrakis-&lt;environment&gt;, and AWS caps them: a load balancer or target group name at 32
    /// characters, an ElastiCache replication group id at 40, an RDS identifier at 63, an IAM role name at 64. An
    /// environment like "production-eu-west" passed plan and failed at apply, with the environment half created.
    /// </summary>
    [Fact]
    public void The_environment_is_validated_so_every_name_built_from_it_fits_aws_limits()
    {
        var variable = DeployFiles.Hcl().GetProperty("variables.tf").GetProperty("variable").GetProperty("environment")[0];
        Assert.True(variable.TryGetProperty("validation", out var validation), "var.environment has no validation");
        var condition = validation[0].GetProperty("condition").GetString()!;
        var length = Regex.Match(condition, @"length\(var\.environment\) <= (\d+)");
        var pattern = Regex.Match(condition, @"regex\(""([^""]+)"", var\.environment\)");
        Assert.True(length.Success && pattern.Success, condition);
        var maxLength = int.Parse(length.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        var allowed = new Regex(pattern.Groups[1].Value);

        // RDS and ElastiCache identifiers: a letter first, no trailing hyphen nor two in a row; lower case, or RDS stores
        // them lowered and every plan shows a change.
        Assert.Matches(allowed, DeployFiles.Environment);
        Assert.All(new[] { "prod", "qa-2", new string('a', maxLength) }, e => Assert.Matches(allowed, e));
        Assert.All(new[] { "Prod", "prod-", "qa--2", "2qa", "qa_2", "qa.2" }, e => Assert.DoesNotMatch(allowed, e));

        var limits = new (string Type, string Attribute, int Max)[]
        {
            ("aws_lb", "name", 32), ("aws_lb_target_group", "name", 32), ("aws_elasticache_replication_group", "replication_group_id", 40),
            ("aws_db_instance", "identifier", 63), ("aws_iam_role", "name", 64),
        };
        var prefix = DeployFiles.Locals()["prefix"].GetString()!;
        List<(string Name, int Max)> Names(string environment) => limits
            .SelectMany(l => DeployFiles.Resources(l.Type).Select(r => (Template: Str(r.Body, l.Attribute), l.Max, r.Body)))
            .SelectMany(r => (r.Body.TryGetProperty("for_each", out _) ? ForEachKeys(r.Body) : [""])
                .Select(key => (DeployFiles.Resolve(r.Template.Replace("${local.prefix}", prefix.Replace("${var.environment}", environment, StringComparison.Ordinal), StringComparison.Ordinal)
                    .Replace("${each.key}", key, StringComparison.Ordinal)), r.Max)))
            .ToList();

        var longest = Names(new string('a', maxLength));
        Assert.Equal(7, longest.Count); // the ALB, two target groups, Redis, PostgreSQL, two roles
        Assert.All(longest, n => Assert.True(!n.Name.Contains("${", StringComparison.Ordinal) && n.Name.Length <= n.Max, $"{n.Name}: {n.Name.Length} characters, at most {n.Max}"));
        // The bound is the one the longest name sets, not an arbitrary one.
        Assert.Contains(Names(new string('a', maxLength + 1)), n => n.Name.Length > n.Max);
    }

    [Fact]
    public void Cloud_map_names_and_ports_match_the_configured_service_urls()
    {
        var locals = DeployFiles.Locals();
        var ns = DeployFiles.Resolve(Str(DeployFiles.Resource("aws_service_discovery_private_dns_namespace", "main"), "name"));
        Assert.Equal("arrakis-staging.local", ns);
        var ports = locals["ports"].EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetInt32());
        Assert.Equal(ServiceEndpoints.FreesidePort, ports["freeside"]);
        Assert.Equal(ServiceEndpoints.FinnPort, ports["finn"]);
        Assert.Equal(ServiceEndpoints.DixiePort, ports["dixie"]);

        var urls = locals["service_urls"].EnumerateObject().ToDictionary(p => p.Name, p => DeployFiles.Resolve(p.Value.GetString()!));
        var environment = locals["common_environment"].EnumerateArray()
            .ToDictionary(e => e.GetProperty("name").GetString()!, e => e.GetProperty("value").GetString()!);
        foreach (var service in new[] { "freeside", "finn", "dixie" })
        {
            var cloudMapName = Str(DeployFiles.Resource("aws_service_discovery_service", service), "name");
            var url = new Uri(urls[service]);
            Assert.Equal($"{cloudMapName}.{ns}", url.Host);
            Assert.Equal(ports[service], url.Port);

            // The key ServiceEndpoints reads (Services:FinnUrl) as an environment variable, pointing at that URL.
            var key = "Services__" + char.ToUpperInvariant(service[0]) + service[1..] + "Url";
            Assert.Equal(urls[service], DeployFiles.Resolve(environment[key]));
            var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { [key.Replace("__", ":", StringComparison.Ordinal)] = urls[service] }).Build();
            var resolved = service switch
            {
                "freeside" => ServiceEndpoints.FreesideUrl(config),
                "finn" => ServiceEndpoints.FinnUrl(config),
                _ => ServiceEndpoints.DixieUrl(config),
            };
            Assert.Equal(urls[service], resolved);
        }

        Assert.Equal(ports["freeside"], int.Parse(DeployFiles.Resolve(DeployFiles.Resource("aws_lb_target_group", "freeside").GetProperty("port").GetRawText().Trim('"')), System.Globalization.CultureInfo.InvariantCulture));
        Assert.Equal(ports["dixie"], int.Parse(DeployFiles.Resolve(DeployFiles.Resource("aws_lb_target_group", "dixie").GetProperty("port").GetRawText().Trim('"')), System.Globalization.CultureInfo.InvariantCulture));
    }

    [Fact]
    public void Nothing_under_scripts_deploy_or_the_workflows_mentions_fly_io()
    {
        var fly = new Regex(@"fl[y]\.io|fl[y]ctl|fl[y] deploy", RegexOptions.IgnoreCase);
        var roots = new[] { "scripts", "deploy", ".github", "tools/terraform-check" }.Select(r => Path.Combine(DeployFiles.Root, r)).Where(Directory.Exists).ToList();
        Assert.Contains(roots, r => r.EndsWith("deploy", StringComparison.Ordinal));
        var hits = roots.SelectMany(r => Directory.EnumerateFiles(r, "*", SearchOption.AllDirectories))
            .Where(f => !f.Contains("node_modules", StringComparison.Ordinal))
            .SelectMany(f => File.ReadLines(f).Select((line, i) => (f, i, line)))
            .Where(x => fly.IsMatch(x.line))
            .Select(x => $"{Path.GetRelativePath(DeployFiles.Root, x.f)}:{x.i + 1}: {x.line}")
            .ToList();
        Assert.True(hits.Count == 0, string.Join("\n", hits));
    }
}
