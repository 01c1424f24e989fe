using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Arrakis.Shared.Tests.Deploy;

/// <summary>Finds the repository, runs external tools (node, promtool) and resolves simple Terraform references.</summary>
internal static partial class DeployFiles
{
    public static string Root { get; } = FindRoot();

    public static string Terraform => Path.Combine(Root, "deploy", "terraform");

    static string FindRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Arrakis.slnx")))
        {
            dir = dir.Parent;
        }

        return dir?.FullName ?? throw new InvalidOperationException("Arrakis.slnx not found above " + AppContext.BaseDirectory);
    }

    /// <summary>The full path of <paramref name="tool"/> on PATH (or a known location), or null.</summary>
    public static string? Which(string tool, params string[] known)
    {
        foreach (var k in known)
        {
            if (File.Exists(k))
            {
                return k;
            }
        }

        foreach (var dir in (System.Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(Path.PathSeparator))
        {
            var candidate = Path.Combine(dir, tool);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    /// <summary>Skips when a tool is missing on a developer machine; fails in CI (ARRAKIS_REQUIRE_PG=1), where it must run.</summary>
    public static string RequireTool(string tool, params string[] known)
    {
        var path = Which(tool, known);
        if (path is null)
        {
            if (TestStorage.PostgresRequired)
            {
                Assert.Fail($"{tool} is required in CI (ARRAKIS_REQUIRE_PG=1) but is not installed");
            }

            Assert.Skip($"{tool} is not installed");
        }

        return path!;
    }

    public static (int Code, string Stdout, string Stderr) Run(string file, string args, string workingDirectory, int timeoutMs = 180_000)
    {
        var psi = new ProcessStartInfo(file, args)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeoutMs))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {args} did not finish in {timeoutMs} ms");
        }

        return (process.ExitCode, stdout.Result, stderr.Result);
    }

    static readonly Lock HclGate = new();
    static JsonElement? _hcl;

    /// <summary>deploy/terraform/*.tf as parsed by @cdktf/hcl2json: <c>{ "file.tf": { "resource": ..., ... } }</c>.</summary>
    public static JsonElement Hcl()
    {
        var node = RequireTool("node");
        lock (HclGate)
        {
            if (_hcl is { } cached)
            {
                return cached;
            }

            var tool = Path.Combine(Root, "tools", "terraform-check");
            if (!Directory.Exists(Path.Combine(tool, "node_modules", "@cdktf", "hcl2json")))
            {
                var npm = RequireTool("npm");
                var install = Run(npm, "ci --no-audit --no-fund", tool);
                Assert.True(install.Code == 0, "npm ci in tools/terraform-check failed: " + install.Stderr);
            }

            var (code, stdout, stderr) = Run(node, $"hcl2json.mjs \"{Terraform}\"", tool);
            Assert.True(code == 0, "hcl2json rejected deploy/terraform: " + stderr);
            _hcl = JsonDocument.Parse(stdout).RootElement.Clone();
            return _hcl.Value;
        }
    }

    /// <summary>Every block of a resource type across files: (name, body).</summary>
    public static List<(string Name, JsonElement Body)> Resources(string type)
    {
        var list = new List<(string, JsonElement)>();
        foreach (var file in Hcl().EnumerateObject())
        {
            if (file.Value.TryGetProperty("resource", out var res) && res.TryGetProperty(type, out var byName))
            {
                foreach (var r in byName.EnumerateObject())
                {
                    foreach (var body in r.Value.EnumerateArray())
                    {
                        list.Add((r.Name, body));
                    }
                }
            }
        }

        return list;
    }

    public static JsonElement Resource(string type, string name)
    {
        var found = Resources(type).Where(r => r.Name == name).ToList();
        Assert.True(found.Count == 1, $"expected one {type}.{name}, found {found.Count}");
        return found[0].Body;
    }

    /// <summary>The CloudWatch dashboards under deploy/terraform/dashboards, rendered as Terraform's templatefile would for staging.</summary>
    public static List<(string File, JsonDocument Json)> RenderedDashboards(string environment)
    {
        var vars = new Dictionary<string, string>
        {
            ["env"] = environment, ["region"] = "us-east-1", ["cluster"] = "arrakis-" + environment, ["alb"] = "app/x/1", ["tg_freeside"] = "targetgroup/f/1",
            ["tg_dixie"] = "targetgroup/d/1", ["db"] = $"arrakis-{environment}-postgres", ["redis"] = $"arrakis-{environment}-redis",
        };
        var list = new List<(string, JsonDocument)>();
        foreach (var file in Directory.GetFiles(Path.Combine(Terraform, "dashboards"), "*.json.tftpl").Order(StringComparer.Ordinal))
        {
            var text = File.ReadAllText(file);
            Assert.DoesNotContain("%{", text);
            var rendered = Regex.Replace(text, @"\$\{(\w+)\}", m => vars.TryGetValue(m.Groups[1].Value, out var v) ? v : throw new InvalidOperationException($"{file}: unknown template variable {m.Value}"));
            list.Add((Path.GetFileName(file), JsonDocument.Parse(rendered)));
        }

        return list;
    }

    /// <summary>
    /// Every CloudWatch metric a Terraform alarm or dashboard names: where, namespace, name, and (dashboards only) the
    /// dimension names the row asks for, or null when the reference does not fix them.
    /// </summary>
    public static List<(string Where, string Namespace, string Name, IReadOnlySet<string>? Dimensions)> CloudWatchReferences(string environment)
    {
        var refs = new List<(string, string, string, IReadOnlySet<string>?)>();
        foreach (var (name, body) in Resources("aws_cloudwatch_metric_alarm"))
        {
            if (body.TryGetProperty("metric_name", out var metric))
            {
                refs.Add(("alarm " + name, Resolve(body.GetProperty("namespace").GetString()!), metric.GetString()!, null));
            }

            if (body.TryGetProperty("metric_query", out var queries))
            {
                foreach (var q in queries.EnumerateArray().Where(q => q.TryGetProperty("metric", out _)))
                {
                    var m = q.GetProperty("metric")[0];
                    refs.Add(("alarm " + name, Resolve(m.GetProperty("namespace").GetString()!), m.GetProperty("metric_name").GetString()!, null));
                }
            }
        }

        foreach (var (file, json) in RenderedDashboards(environment))
        {
            foreach (var w in json.RootElement.GetProperty("widgets").EnumerateArray().Where(w => w.GetProperty("type").GetString() == "metric"))
            {
                foreach (var row in w.GetProperty("properties").GetProperty("metrics").EnumerateArray().Where(r => r[0].ValueKind == JsonValueKind.String))
                {
                    var dims = row.EnumerateArray().Skip(2).TakeWhile(e => e.ValueKind == JsonValueKind.String).Select(e => e.GetString()!).Where((_, i) => i % 2 == 0).ToHashSet();
                    refs.Add((file, row[0].GetString()!, row[1].GetString()!, dims));
                }
            }
        }

        return refs;
    }

    /// <summary>All locals blocks merged.</summary>
    public static Dictionary<string, JsonElement> Locals()
    {
        var d = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
        foreach (var file in Hcl().EnumerateObject())
        {
            if (file.Value.TryGetProperty("locals", out var blocks))
            {
                foreach (var block in blocks.EnumerateArray())
                {
                    foreach (var p in block.EnumerateObject())
                    {
                        d[p.Name] = p.Value;
                    }
                }
            }
        }

        return d;
    }

    public static string? VariableDefault(string name)
    {
        foreach (var file in Hcl().EnumerateObject())
        {
            if (file.Value.TryGetProperty("variable", out var vars) && vars.TryGetProperty(name, out var v) && v[0].TryGetProperty("default", out var def))
            {
                return def.ValueKind == JsonValueKind.String ? def.GetString() : def.GetRawText();
            }
        }

        return null;
    }

    /// <summary>Resolves <c>${local.x}</c>, <c>${local.x.y}</c>, <c>${local.x["y"]}</c> and <c>${var.x}</c> (defaults) inside a string.</summary>
    public static string Resolve(string text)
    {
        var locals = Locals();
        for (var i = 0; i < 10 && text.Contains("${", StringComparison.Ordinal); i++)
        {
            text = Reference().Replace(text, m =>
            {
                var kind = m.Groups["kind"].Value;
                var name = m.Groups["name"].Value;
                var key = m.Groups["key"].Success ? m.Groups["key"].Value : m.Groups["key2"].Success ? m.Groups["key2"].Value : null;
                if (kind == "var")
                {
                    return VariableDefault(name) ?? m.Value;
                }

                if (!locals.TryGetValue(name, out var value))
                {
                    return m.Value;
                }

                if (key is not null)
                {
                    if (value.ValueKind != JsonValueKind.Object || !value.TryGetProperty(key, out value))
                    {
                        return m.Value;
                    }
                }

                return value.ValueKind == JsonValueKind.String ? value.GetString()! : value.GetRawText();
            });
        }

        return text;
    }

    [GeneratedRegex("""\$\{(?<kind>local|var)\.(?<name>[A-Za-z_][A-Za-z0-9_]*)(?:\.(?<key>[A-Za-z_][A-Za-z0-9_]*)|\["(?<key2>[^"]+)"\])?\}""")]
    private static partial Regex Reference();

    public static string Environment => VariableDefault("environment") ?? "staging";
}
