using System.CommandLine;
using System.Diagnostics;

namespace Arrakis.Cli.Commands;

/// <summary>
/// <c>loa deploy</c>: the staging deploy pipeline of a repository checkout, <c>scripts/staging-deploy-all.sh</c> (build and
/// push the images, Terraform, the migration gate, freeside → finn → dixie, the launch gate and the G-1..G-9 report). The
/// pipeline builds its images from the checkout, so it runs there; this command finds it and passes the exit code on.
/// </summary>
internal static class DeployCommand
{
    public const string Script = "scripts/staging-deploy-all.sh";

    public static Command Create()
    {
        var dryRun = new Option<bool>("--dry-run") { Description = "print every command of the plan and exit 0; touch nothing" };
        var parallel = new Option<bool>("--parallel") { Description = "roll finn and dixie together once freeside is stable" };
        var branch = new Option<string>("--branch") { Description = "the branch to deploy; the working tree must be at it and clean", DefaultValueFactory = _ => "staging" };
        var repo = new Option<DirectoryInfo?>("--repo") { Description = "the repository checkout (default: the current directory or the nearest one above it that has " + Script + ")" };
        var command = new Command("deploy",
            "Deploy staging on AWS with the checkout's pipeline (" + Script + "): pre-flight, images to ECR, terraform plan/apply, the loa migrate task as a hard gate, " +
            "freeside → finn → dixie, the launch gate 3 times and the G-1..G-9 report. Needs git, docker, aws, terraform, jq and dotnet, and TF_STATE_BUCKET, " +
            "TF_VAR_certificate_arn, TF_VAR_x402_pay_to and TF_VAR_x402_rpc_url (deploy/terraform/README.md). Exit 0 READY, 2 READY_DEGRADED, 1 otherwise; 0 for --dry-run.")
        {
            dryRun, parallel, branch, repo,
        };
        command.SetAction(async (parse, ct) =>
        {
            var root = Find(parse.GetValue(repo));
            if (root is null)
            {
                Console.Error.WriteLine(
                    $"loa deploy runs the deploy pipeline of a repository checkout, and there is no {Script} in " +
                    $"{parse.GetValue(repo)?.FullName ?? Environment.CurrentDirectory + " or above it"}. Run it from the checkout, or pass --repo DIR.");
                return 1;
            }

            var start = new ProcessStartInfo("bash") { WorkingDirectory = root, UseShellExecute = false };
            start.ArgumentList.Add(Path.Combine(root, Script));
            if (parse.GetValue(dryRun))
            {
                start.ArgumentList.Add("--dry-run");
            }

            if (parse.GetValue(parallel))
            {
                start.ArgumentList.Add("--parallel");
            }

            start.ArgumentList.Add("--branch");
            start.ArgumentList.Add(parse.GetValue(branch)!);
            using var process = Process.Start(start)!;
            try
            {
                await process.WaitForExitAsync(ct);
            }
            catch (OperationCanceledException)
            {
                // Ctrl-C reaches the pipeline too (same process group); give it a moment to stop its own commands.
                if (!process.WaitForExit(TimeSpan.FromSeconds(10)))
                {
                    process.Kill(entireProcessTree: true);
                }

                return 130;
            }

            return process.ExitCode;
        });
        return command;
    }

    static string? Find(DirectoryInfo? repo)
    {
        if (repo is not null)
        {
            return File.Exists(Path.Combine(repo.FullName, Script)) ? repo.FullName : null;
        }

        for (var dir = new DirectoryInfo(Environment.CurrentDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, Script)))
            {
                return dir.FullName;
            }
        }

        return null;
    }
}
