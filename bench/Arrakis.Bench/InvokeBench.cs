using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Arrakis.Dixie;
using Arrakis.Finn;
using Arrakis.Freeside;
using Arrakis.Freeside.Communities;
using Arrakis.Freeside.Identity;
using Arrakis.Freeside.Seeding;
using Arrakis.Shared.Contracts;
using Arrakis.Shared.Storage;
using Arrakis.Shared.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

/// <summary>
/// Gateway overhead: the same non-streaming chat call measured at the client three ways in one run: straight to the
/// provider (a loopback OpenAI-compatible server that answers at once), to finn, and through freeside → finn (rate limit,
/// idempotency, reserve, finn token, finalize, usage record). Overhead = freeside path minus the provider baseline.
/// A second platform on the built-in local provider (0 ms) measures freeside against direct finn without any vendor hop.
/// </summary>
static class InvokeBench
{
    const string Prompt = "Say hello in exactly 3 words";
    static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    /// <summary>Each path is measured in this many slices, taking turns with the others.</summary>
    const int Rounds = 4;

    public static async Task<int> RunAsync(string[] args, Func<string, string?> arg)
    {
        var seconds = double.Parse(arg("--seconds") ?? "5", System.Globalization.CultureInfo.InvariantCulture);
        var warmUpSeconds = double.Parse(arg("--warmup") ?? "3", System.Globalization.CultureInfo.InvariantCulture);
        var maxWarmUpSeconds = double.Parse(arg("--warmup-max") ?? "180", System.Globalization.CultureInfo.InvariantCulture);
        var warmedUp = 0.0;
        var everQuiet = true;
        var pg = arg("--pg") ?? (Environment.GetEnvironmentVariable("ARRAKIS_TEST_PG") is { Length: > 0 } fromEnv ? fromEnv : null);
        var engines = arg("--engines")?.Split(',') ?? (pg is null ? ["sqlite"] : ["sqlite", "postgres"]);
        if (engines.FirstOrDefault(e => e is not ("sqlite" or "postgres")) is { } unknown)
        {
            Console.Error.WriteLine($"Unknown engine '{unknown}': --engines takes sqlite, postgres or both (comma-separated).");
            return 2;
        }

        if (engines.Contains("postgres") && pg is null)
        {
            Console.Error.WriteLine("--engines postgres needs a PostgreSQL connection string: pass --pg CONN or set ARRAKIS_TEST_PG (eval \"$(scripts/test-services.sh)\").");
            return 2;
        }

        var rows = new List<string>();
        var breakdownRows = new List<string>();
        var breakdownNotes = new List<string>();

        var slowMs = int.Parse(arg("--slow-provider-ms") ?? "250", System.Globalization.CultureInfo.InvariantCulture);
        await using var vendor = await OpenAiStub.StartAsync(TimeSpan.Zero);
        // A provider that takes as long as a short real completion: 32 calls in flight then arrive at a rate this machine
        // serves easily, so those rows show the overhead at that concurrency without the queue of a saturated machine.
        await using var slowVendor = slowMs > 0 ? await OpenAiStub.StartAsync(TimeSpan.FromMilliseconds(slowMs)) : null;
        var providers = new List<(string Label, OpenAiStub? Vendor, int[]? OnlyClients)>
        {
            ("openai-compatible loopback", vendor, null),
            ("local (0 ms)", null, null),
        };
        if (slowVendor is not null)
        {
            providers.Add(($"openai-compatible loopback, answers in {slowMs} ms", slowVendor, [32]));
        }

        foreach (var engine in engines)
        {
            foreach (var (provider, providerStub, onlyClients) in providers.Where(p => arg("--providers") is not { } only || p.Label.StartsWith(only, StringComparison.Ordinal)))
            {
                var viaVendor = providerStub is not null;
                var direct = providerStub ?? vendor;
                var clientCounts = (arg("--clients")?.Split(',').Select(int.Parse) ?? [1, 32]).Where(c => onlyClients is null || onlyClients.Contains(c)).ToList();
                if (clientCounts.Count == 0)
                {
                    continue;
                }

                await using var platform = await BenchPlatform.StartAsync(engine, pg, providerStub?.BaseUrl);
                foreach (var clients in clientCounts)
                {
                    // Closed loop (each client sends its next call when the last one answered), or for the slow provider open loop.
                    Task<(List<double> Latencies, double Seconds)> Measure(Func<HttpClient, Task<HttpRequestMessage>> make, double forSeconds, int seed) =>
                        onlyClients is null ? MeasureAsync(make, clients, forSeconds) : MeasureOpenLoopAsync(make, clients * 1000.0 / slowMs, forSeconds, seed);

                    var targets = new List<(string Name, Func<HttpClient, Task<HttpRequestMessage>> Make)>
                    {
                        ("provider direct", _ => Task.FromResult(direct.Request())),
                        ("finn direct", _ => Task.FromResult(platform.FinnRequest())),
                        ("freeside → finn", _ => Task.FromResult(platform.FreesideRequest())),
                    };
                    if (arg("--only") is { } only)
                    {
                        targets.RemoveAll(t => !t.Name.StartsWith(only, StringComparison.Ordinal)); // profiling one path; no "added by" row
                    }

                    // The paths take turns in short slices, so a slow spell of the machine falls on all of them alike.
                    var samples = targets.ToDictionary(t => t.Name, _ => new List<double>());
                    var busy = targets.ToDictionary(t => t.Name, _ => 0.0);
                    var cpu = targets.ToDictionary(t => t.Name, _ => TimeSpan.Zero);
                    // Warm-up: until tiered compilation has finished promoting the hot paths to optimized code, as it has in
                    // a service that has been up for a while. On 2 busy cores the background JIT needs tens of seconds for
                    // that; measured before it is done, the paths run partly in instrumented tier-0 code.
                    var (spent, quiet) = await WarmUpAsync(targets.Select(t => t.Make).ToList(), clients, warmUpSeconds, maxWarmUpSeconds);
                    warmedUp = Math.Max(warmedUp, spent);
                    everQuiet &= quiet;

                    for (var round = 0; round < Rounds; round++)
                    {
                        foreach (var (name, make) in targets)
                        {
                            var cpuBefore = ProcessCpu();
                            var (latencies, elapsed) = await Measure(make, seconds / Rounds, round);
                            cpu[name] += ProcessCpu() - cpuBefore;
                            samples[name].AddRange(latencies);
                            busy[name] += elapsed;
                        }
                    }

                    var measured = targets.ToDictionary(t => t.Name, t => Summarize(samples[t.Name], busy[t.Name], cpu[t.Name]));
                    foreach (var (name, _) in targets)
                    {
                        rows.Add(Row(engine, provider, name, ClientsLabel(clients, onlyClients is not null), measured[name], null));
                    }

                    if (((clients == 1 && !viaVendor) || onlyClients is not null) && arg("--only") is null && arg("--breakdown") != "off")
                    {
                        // Apart from the table: the listener's own cost would be in its numbers.
                        var freesidePath = targets.First(t => t.Name == "freeside → finn").Make;
                        var load = onlyClients is null ? "1 client, provider 0 ms" : $"{clients} in flight, provider {slowMs} ms";
                        using var breakdown = new CallBreakdown();
                        await Measure(freesidePath, 2, 99); // compiles what listening adds
                        breakdown.Clear();
                        await Measure(freesidePath, seconds, 100);
                        var (parts, calls, roundTrips) = breakdown.Summarize();
                        breakdownRows.AddRange(parts.Select(p => $"| {engine} | {load} | {p.Part} | {p.P50:0.00} | {p.P99:0.00} |"));
                        breakdownNotes.Add($"{engine}, {load}: {calls} calls{(engine == "postgres" ? $", {roundTrips:0} database round trips each (median)" : "")}");
                    }

                    var gateway = measured.GetValueOrDefault("freeside → finn");
                    foreach (var (label, baselineName) in new[] { ("freeside", "finn direct"), ("freeside+finn", "provider direct") })
                    {
                        if (gateway is not null && measured.TryGetValue(baselineName, out var baseline))
                        {
                            rows.Add($"| {engine} | {provider} | **added by {label}** (vs {baselineName}) | {ClientsLabel(clients, onlyClients is not null)} | | " +
                                $"**{gateway.P50 - baseline.P50:0.00}** | **{gateway.P99 - baseline.P99:0.00}** | {gateway.P50 / baseline.P50:0.0}× | {gateway.CpuMsPerCall - baseline.CpuMsPerCall:0.000} |");
                        }
                    }
                }
            }
        }

        var (signUs, verifyUs) = MeasureEs256();
        Console.Error.WriteLine($"ES256: sign {signUs:0.0} µs, verify {verifyUs:0.0} µs");
        var table = string.Join('\n', rows);
        Console.Error.WriteLine(table);
        var breakdownTable = string.Join('\n', breakdownRows);
        Console.Error.WriteLine(breakdownTable);
        Console.Error.WriteLine(string.Join("; ", breakdownNotes));
        if (arg("--out") is { } outPath)
        {
            var section = $$"""
                ## Invoke: gateway overhead (freeside + finn)

                - Machine: {{Environment.ProcessorCount}} cores, {{System.Runtime.InteropServices.RuntimeInformation.OSDescription}}, .NET {{Environment.Version}}. Client, services and provider share these cores.
                - Command: `dotnet run -c Release --project bench/Arrakis.Bench -- invoke --seconds {{seconds}} --out docs/benchmarks.md` (PostgreSQL rows when `ARRAKIS_TEST_PG` is set).
                - One process hosts freeside, finn and dixie exactly as `loa up` does (production configuration: JSON logs with one `INVOKE_COMPLETE` line per call, metrics, the rate limiter with raised limits, the ledger on the engine named).
                - Every request is a non-streaming `{"prompt":"{{Prompt}}","model":"cheap"}` with a fresh single-use ES256 token minted outside the timed part; latency is measured at the client from send to the last body byte.
                - "provider direct" = the loopback OpenAI-compatible server, which answers at once (or, in the "answers in {{slowMs}} ms" rows, after that delay, like a short real completion: those rows start calls at random (Poisson) times, {{(slowMs > 0 ? 32_000 / slowMs : 0)}} a second on average, so that 32 are in flight on average: a load this machine serves without a standing queue, so they show the overhead at that concurrency. They are not the issue's measure, which takes the provider at 0 ms); "finn direct" = finn's `/api/v1/invoke` with a freeside-audience token; "freeside → finn" = the public `/api/agents/invoke` (rate limit, idempotency, reserve, finn token, finn → provider, finalize + usage record, stored response).
                - "added by" rows = the freeside path minus a baseline at the same percentile and concurrency, measured in the same run: "added by freeside+finn" against the provider called directly (with the local provider, whose answer takes 0 ms inside finn, that is all of freeside and finn: the issue's measure), "added by freeside" against finn called directly. Anchors: LiteLLM median overhead 4.34 ms, Portkey 2.37 ms; our target is p50 ≤ 2 ms and p99 ≤ 10 ms added by freeside+finn.
                - "CPU ms/call" = the CPU time this whole process (client, services, provider and their background work, on all cores) used during a path's slices, divided by the calls answered in them; on "added by" rows, the difference. On the postgres rows the database server's own CPU is not in it (its processes are not this one). The client mints a token for each finn and freeside call (one ES256 signature), none for the provider. ES256 in this run, one thread: sign {{signUs:0}} µs, verify {{verifyUs:0}} µs (P-256, .NET's ECDsa over OpenSSL); a call through freeside needs three (freeside verifies the user's token and signs finn's, finn verifies that). With {{Environment.ProcessorCount}} cores, 32 closed-loop clients see a median near 32 / (calls per second), so a 2 ms median needs about 16,000 calls a second: at most {{Environment.ProcessorCount * 1000.0 / 16_000:0.000}} ms of CPU a call for everything.
                - Measured {{DateTimeOffset.UtcNow:yyyy-MM-dd HH:mm}} UTC: per row {{seconds}} s in {{Rounds}} slices that take turns with the other paths (so a slow spell of this shared machine falls on all of them), after a warm-up of each path that lasted until the JIT had gone quiet (at least {{warmUpSeconds}} s each; the longest took {{warmedUp:0}} s in all{{(everQuiet ? "" : "; in at least one the JIT was still busy when the --warmup-max limit ended it")}}).

                | engine | provider | path | clients | req/s | p50 ms | p99 ms | p50 ratio | CPU ms/call |
                |---|---|---|---|---|---|---|---|---|
                {{table}}

                ### Where a call's time goes

                Measured right after the rows above, {{seconds}} s for each engine and load, with an `ActivityListener` on HttpClient (the client's call to freeside and freeside's call to finn), ASP.NET Core (each service's handling of a request), the ledger (`ledger.reserve`, `ledger.finalize`) and Npgsql; the spans of each call are joined by trace id ({{string.Join("; ", breakdownNotes)}}). Each part is its own median and p99 over those calls, so the parts do not add up to the whole. An HttpClient span ends when the response headers arrive; "HTTP between" rows are the caller's span minus the callee's. Listening costs time itself, so the whole call runs a little slower here than in the table above.

                | engine | load | part | p50 ms | p99 ms |
                |---|---|---|---|---|
                {{breakdownTable}}

                {{BenchmarkDoc.Reading("invoke")}}
                """;
            BenchmarkDoc.Write(outPath, "invoke", section);
        }

        return 0;
    }

    /// <summary>
    /// Runs every path for <paramref name="minSeconds"/>, then keeps cycling through them in one-second turns until a
    /// whole cycle compiled for less than 1 % of its time (or <paramref name="maxSeconds"/> passed). Returns the seconds spent
    /// and whether the JIT went quiet.
    /// </summary>
    static async Task<(double Seconds, bool Quiet)> WarmUpAsync(List<Func<HttpClient, Task<HttpRequestMessage>>> paths, int clients, double minSeconds, double maxSeconds)
    {
        var clock = Stopwatch.StartNew();
        foreach (var make in paths)
        {
            await MeasureAsync(make, clients, minSeconds);
        }

        while (clock.Elapsed.TotalSeconds < maxSeconds)
        {
            var jitBefore = System.Runtime.JitInfo.GetCompilationTime();
            var cycle = Stopwatch.StartNew();
            foreach (var make in paths)
            {
                await MeasureAsync(make, clients, 1);
            }

            var jitMs = (System.Runtime.JitInfo.GetCompilationTime() - jitBefore).TotalMilliseconds;
            Console.Error.WriteLine($"warm-up {clock.Elapsed.TotalSeconds:0} s: JIT {jitMs:0} ms in the last {cycle.Elapsed.TotalSeconds:0.0} s cycle, {System.Runtime.JitInfo.GetCompiledMethodCount()} methods in all");
            if (jitMs < cycle.Elapsed.TotalMilliseconds / 100)
            {
                return (clock.Elapsed.TotalSeconds, true);
            }
        }

        return (clock.Elapsed.TotalSeconds, false);
    }

    sealed record Stats(double Rate, double P50, double P99, double CpuMsPerCall);

    static string ClientsLabel(int clients, bool openLoop) => openLoop ? $"{clients} in flight (mean; open loop)" : clients.ToString(System.Globalization.CultureInfo.InvariantCulture);

    static string Row(string engine, string provider, string path, string clients, Stats s, string? ratio) =>
        $"| {engine} | {provider} | {path} | {clients} | {s.Rate:0} | {s.P50:0.00} | {s.P99:0.00} | {ratio} | {s.CpuMsPerCall:0.000} |";

    static HttpClient NewClient() =>
        new(new SocketsHttpHandler { MaxConnectionsPerServer = 256, PooledConnectionLifetime = TimeSpan.FromMinutes(10) });

    /// <summary>One call, timed from send to the last body byte (the request, with its fresh token, is made before).</summary>
    static async Task<double> TimeOneAsync(HttpClient http, Func<HttpClient, Task<HttpRequestMessage>> make)
    {
        using var request = await make(http);
        var t = Stopwatch.GetTimestamp();
        using var response = await http.SendAsync(request);
        var body = await response.Content.ReadAsByteArrayAsync();
        var elapsed = Stopwatch.GetElapsedTime(t).TotalMilliseconds;
        return response.IsSuccessStatusCode
            ? elapsed
            : throw new InvalidOperationException($"{request.RequestUri} answered {(int)response.StatusCode}: {Encoding.UTF8.GetString(body)}");
    }

    /// <summary>
    /// Open loop: calls start at Poisson arrival times, <paramref name="perSecond"/> on average, whether or not earlier ones
    /// have answered (so the clients never move in step, and a slow answer does not hold back the next call).
    /// </summary>
    static async Task<(List<double> Latencies, double Seconds)> MeasureOpenLoopAsync(Func<HttpClient, Task<HttpRequestMessage>> make, double perSecond, double seconds, int seed)
    {
        using var http = NewClient();
        var random = new Random(seed);
        var calls = new List<Task<double>>();
        var started = Stopwatch.StartNew();
        var due = 0.0;
        while (true)
        {
            due += -Math.Log(1 - random.NextDouble()) / perSecond;
            if (due >= seconds)
            {
                break;
            }

            if (due - started.Elapsed.TotalSeconds is var wait and > 0)
            {
                await Task.Delay(TimeSpan.FromSeconds(wait));
            }

            calls.Add(Task.Run(() => TimeOneAsync(http, make)));
        }

        var latencies = (await Task.WhenAll(calls)).ToList();
        return (latencies, seconds); // the window the calls started in (the rate's denominator), not the wait for the last answers
    }

    static async Task<(List<double> Latencies, double Seconds)> MeasureAsync(Func<HttpClient, Task<HttpRequestMessage>> make, int clients, double seconds)
    {
        using var http = NewClient();
        async Task<List<double>> LoopAsync(double forSeconds)
        {
            var mine = new List<double>();
            var stop = Stopwatch.StartNew();
            while (stop.Elapsed.TotalSeconds < forSeconds)
            {
                mine.Add(await TimeOneAsync(http, make));
            }

            return mine;
        }

        var started = Stopwatch.StartNew();
        var all = (await Task.WhenAll(Enumerable.Range(0, clients).Select(_ => Task.Run(() => LoopAsync(seconds))))).SelectMany(l => l).ToList();
        return (all, started.Elapsed.TotalSeconds);
    }

    static Stats Summarize(List<double> latencies, double seconds, TimeSpan cpu)
    {
        var sorted = latencies.Order().ToArray();
        return new Stats(sorted.Length / seconds, Pct(sorted, 0.50), Pct(sorted, 0.99), sorted.Length == 0 ? 0 : cpu.TotalMilliseconds / sorted.Length);
    }

    /// <summary>CPU time used so far by this process on all its threads (client, services, provider, background work).</summary>
    static TimeSpan ProcessCpu()
    {
        using var self = Process.GetCurrentProcess();
        return self.TotalProcessorTime;
    }

    /// <summary>
    /// What one ES256 signature and one verification cost on this machine (P-256 with SHA-256 over a token-sized input,
    /// .NET's ECDsa as the token handlers use it, one thread): the floor under the three an invoke through freeside needs.
    /// </summary>
    static (double SignUs, double VerifyUs) MeasureEs256()
    {
        using var key = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        var input = new byte[600];
        new Random(7).NextBytes(input);
        var hash = System.Security.Cryptography.HashAlgorithmName.SHA256;
        var format = System.Security.Cryptography.DSASignatureFormat.IeeeP1363FixedFieldConcatenation;
        var signature = key.SignData(input, hash, format);
        double PerOpUs(Action op, int times)
        {
            for (var i = 0; i < times / 10; i++)
            {
                op();
            }

            var clock = Stopwatch.StartNew();
            for (var i = 0; i < times; i++)
            {
                op();
            }

            return clock.Elapsed.TotalMicroseconds / times;
        }

        var signUs = PerOpUs(() => key.SignData(input, hash, format), 3000);
        var verifyUs = PerOpUs(
            () =>
            {
                if (!key.VerifyData(input, signature, hash, format))
                {
                    throw new InvalidOperationException("ES256 self-check failed");
                }
            },
            3000);
        return (signUs, verifyUs);
    }

    static double Pct(double[] sorted, double p) => sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];

    /// <summary>A loopback server speaking OpenAI chat completions (JSON only) that answers immediately.</summary>
    sealed class OpenAiStub(WebApplication app, string baseUrl) : IAsyncDisposable
    {
        public string BaseUrl => baseUrl;

        public static async Task<OpenAiStub> StartAsync(TimeSpan latency)
        {
            // No configuration file watching: it would watch the working directory recursively and wake on every write.
            var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = ["--hostBuilder:reloadConfigOnChange=false"] });
            builder.Logging.ClearProviders();
            builder.WebHost.UseUrls("http://127.0.0.1:0");
            var app = builder.Build();
            var answer = JsonSerializer.SerializeToUtf8Bytes(new
            {
                id = "chatcmpl-bench",
                @object = "chat.completion",
                created = 1_700_000_000,
                model = "bench-model",
                choices = new[] { new { index = 0, message = new { role = "assistant", content = "Hello there, friend." }, finish_reason = "stop" } },
                usage = new { prompt_tokens = 14, completion_tokens = 5, total_tokens = 19 },
            });
            app.MapPost("/v1/chat/completions", async (HttpContext http) =>
            {
                await http.Request.Body.CopyToAsync(Stream.Null);
                if (latency > TimeSpan.Zero)
                {
                    await Task.Delay(latency);
                }

                http.Response.ContentType = "application/json";
                await http.Response.Body.WriteAsync(answer);
            });
            await app.StartAsync();
            var address = app.Urls.First();
            return new OpenAiStub(app, address + "/v1");
        }

        public HttpRequestMessage Request() => new(HttpMethod.Post, baseUrl + "/chat/completions")
        {
            Content = new StringContent($$"""{"model":"bench-model","messages":[{"role":"user","content":"{{Prompt}}"}],"max_tokens":64}""", Encoding.UTF8, "application/json"),
        };

        public async ValueTask DisposeAsync()
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }

    /// <summary>freeside, finn and dixie in one process, as <c>loa up</c> runs them, seeded, with the gate's free test tenant.</summary>
    sealed class BenchPlatform(WebApplication freeside, WebApplication finn, WebApplication dixie, string freesideUrl, string finnUrl, string dataDir, string? pg, string[] schemas)
        : IAsyncDisposable
    {
        readonly TokenIssuer _issuer = freeside.Services.GetRequiredService<TokenIssuer>();

        public static async Task<BenchPlatform> StartAsync(string engine, string? pg, string? vendorBaseUrl)
        {
            var dataDir = Path.Combine(Path.GetTempPath(), "arrakis-bench-" + Guid.NewGuid().ToString("N")[..8]);
            Directory.CreateDirectory(dataDir);
            var urls = (Freeside: $"http://127.0.0.1:{FreePort()}", Finn: $"http://127.0.0.1:{FreePort()}", Dixie: $"http://127.0.0.1:{FreePort()}");
            var schemaSuffix = Guid.NewGuid().ToString("N")[..8];

            string[] Args(string service, string url)
            {
                var all = new Dictionary<string, string?>
                {
                    ["urls"] = url,
                    ["LOA_DATA_DIR"] = dataDir,
                    ["Services:FreesideUrl"] = urls.Freeside,
                    ["Services:FinnUrl"] = urls.Finn,
                    ["Services:DixieUrl"] = urls.Dixie,
                    ["RateLimits:Free:CommunityPerMinute"] = "100000000",
                    ["RateLimits:Free:UserPerMinute"] = "100000000",
                };
                if (engine == "postgres")
                {
                    all["ConnectionStrings:" + char.ToUpperInvariant(service[0]) + service[1..]] =
                        new Npgsql.NpgsqlConnectionStringBuilder(pg) { SearchPath = $"bench_{service}_{schemaSuffix}" }.ConnectionString;
                }

                if (vendorBaseUrl is not null)
                {
                    all["Providers:OpenAI:BaseUrl"] = vendorBaseUrl;
                    all["Providers:OpenAI:ApiKey"] = "bench-key";
                    all["Pools:Pools:cheap:Models:0:Id"] = "bench-model";
                    all["Pools:Pools:cheap:Models:0:Provider"] = "openai";
                    all["Pools:Pools:cheap:Models:0:VendorModel"] = "bench-model";
                    // The stub speaks JSON only, and the baseline is the same JSON call made directly: finn asks it for JSON too.
                    all["Inference:StreamVendorAnswers"] = "false";
                }

                return all.SelectMany(kv => new[] { "--" + kv.Key, kv.Value! }).ToArray();
            }

            var freeside = await FreesideService.CreateAsync(Args("freeside", urls.Freeside));
            var finn = await FinnService.CreateAsync(Args("finn", urls.Finn));
            var dixie = await DixieService.CreateAsync(Args("dixie", urls.Dixie));
            await freeside.StartAsync();
            await finn.StartAsync();
            await dixie.StartAsync();

            var db = freeside.Services.GetRequiredService<Database>();
            await Seeder.For(db).SeedAsync();
            var communities = freeside.Services.GetRequiredService<CommunityStore>();
            await communities.UpsertAsync(Seeder.CommunityId, Seeder.CommunityName, Tier.Free, CommunityStore.MaxBudgetCents / 10);
            await freeside.Services.GetRequiredService<Arrakis.Freeside.Ledger.Ledger>().GrantAsync(
                Seeder.CommunityId, "bench-lot-" + schemaSuffix, Arrakis.Freeside.Ledger.LedgerIds.MaxAmountMicro / 10, "grant");
            return new BenchPlatform(freeside, finn, dixie, urls.Freeside, urls.Finn, dataDir, engine == "postgres" ? pg : null,
                new[] { "freeside", "finn", "dixie" }.Select(s => $"bench_{s}_{schemaSuffix}").ToArray());
        }

        /// <summary>The public invoke path with a fresh user token shaped like the checklist's (test-tenant, free, cheap).</summary>
        public HttpRequestMessage FreesideRequest()
        {
            var token = _issuer.Mint(FreesideService.Issuer, FreesideService.Issuer, new Dictionary<string, object>
            {
                ["v"] = 1,
                ["tenant_id"] = Seeder.TenantAlias,
                ["access_level"] = "free",
                ["pool_id"] = "cheap",
                ["allowed_pools"] = new[] { "cheap" },
            }, TimeSpan.FromMinutes(5));
            var request = new HttpRequestMessage(HttpMethod.Post, freesideUrl + "/api/agents/invoke")
            {
                Content = new StringContent($$"""{"prompt":"{{Prompt}}","model":"cheap"}""", Encoding.UTF8, "application/json"),
            };
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            return request;
        }

        /// <summary>finn's invoke with the token freeside would mint: freeside audience rules, body bound by req_hash.</summary>
        public HttpRequestMessage FinnRequest()
        {
            var body = new FinnInvokeRequest([new ChatMessage("user", Prompt)], "cheap", 64, null, false, Guid.NewGuid().ToString("N"));
            var bytes = JsonSerializer.SerializeToUtf8Bytes(body, Json);
            var token = _issuer.Mint(FreesideService.Issuer, IdentitySetup.FinnAudience, new Dictionary<string, object>
            {
                ["tenant_id"] = Seeder.TenantAlias,
                ["community_id"] = Seeder.CommunityId,
                ["tier"] = "free",
                ["allowed_pools"] = new[] { "cheap" },
                ["reservation_id"] = "bench-" + body.TraceId,
                ["req_hash"] = FinnContract.RequestHash(bytes),
                ["trace_id"] = body.TraceId,
            });
            var request = new HttpRequestMessage(HttpMethod.Post, finnUrl + "/" + FinnContract.InvokePath) { Content = new ByteArrayContent(bytes) };
            request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            return request;
        }

        public async ValueTask DisposeAsync()
        {
            foreach (var app in new[] { dixie, finn, freeside })
            {
                await app.StopAsync();
                await app.DisposeAsync();
            }

            Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
            if (pg is not null)
            {
                await BenchCleanup.DropSchemasAsync(pg, schemas);
            }

            BenchCleanup.DeleteDirectory(dataDir);
        }

        static int FreePort()
        {
            using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
            listener.Start();
            return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        }
    }
}
