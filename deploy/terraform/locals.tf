locals {
  prefix = "arrakis-${var.environment}"
  # Cloud Map private DNS namespace; services reach each other at http://<service>.<namespace>:<port>.
  namespace = "${local.prefix}.local"

  # Container ports: the services' defaults (ServiceEndpoints.cs) and the Dockerfile's ASPNETCORE_HTTP_PORTS.
  ports = {
    freeside = 3000
    dixie    = 3001
    finn     = 3002
  }

  # Task sizes and scaling bounds (dixie sizing per SDD §9.5: 256 CPU / 512 MB).
  sizes = {
    freeside = { cpu = 512, memory = 1024, desired = 2, max = 6 }
    finn     = { cpu = 512, memory = 1024, desired = 2, max = 6 }
    dixie    = { cpu = 256, memory = 512, desired = 1, max = 3 }
  }

  service_urls = {
    freeside = "http://freeside.${local.namespace}:3000"
    finn     = "http://finn.${local.namespace}:3002"
    dixie    = "http://dixie.${local.namespace}:3001"
  }

  images = {
    freeside = "${aws_ecr_repository.images["freeside"].repository_url}:${var.image_tag}"
    finn     = "${aws_ecr_repository.images["finn"].repository_url}:${var.image_tag}"
    dixie    = "${aws_ecr_repository.images["dixie"].repository_url}:${var.image_tag}"
    loa      = "${aws_ecr_repository.images["loa"].repository_url}:${var.image_tag}"
  }

  # ECS's stopTimeout, from SIGTERM to SIGKILL (Fargate allows 120 s at most): longer than the hosts' shutdownTimeoutSeconds.
  stop_timeout_seconds = 90

  # Configuration every service reads (ASP.NET Core maps __ to :).
  common_environment = [
    { name = "ASPNETCORE_ENVIRONMENT", value = "Production" },
    # The ALB ends TLS and forwards plain HTTP with X-Forwarded-Proto: https. Without this the services see "http", and
    # freeside's x402 402 named http://<host>/api/v1/x402/invoke as the resource to pay for. Only the ALB and the other
    # tasks can reach the tasks (network.tf), and nothing reads the client address.
    { name = "ASPNETCORE_FORWARDEDHEADERS_ENABLED", value = "true" },
    # Longer than the ALB's idle timeout (alb.tf, 240 s): the ALB reuses an idle connection until then, and one Kestrel
    # closed first (its default is 130 s) turns the next request sent on it into a 502.
    { name = "Kestrel__Limits__KeepAliveTimeout", value = "00:05:00" },
    # On SIGTERM the host stops taking connections and lets the calls in progress finish for this long (HostOptions;
    # .NET's default, 30 s, cut freeside's calls to finn, which may take 60 s: finn has no ALB draining it first). ECS
    # kills the task local.stop_timeout_seconds after SIGTERM.
    { name = "shutdownTimeoutSeconds", value = "75" },
    { name = "Services__FreesideUrl", value = local.service_urls["freeside"] },
    { name = "Services__FinnUrl", value = local.service_urls["finn"] },
    { name = "Services__DixieUrl", value = local.service_urls["dixie"] },
    { name = "Metrics__Emf__Enabled", value = "true" },
    { name = "Metrics__Emf__Environment", value = var.environment },
  ]
}
