resource "aws_ecs_cluster" "main" {
  name = local.prefix
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_cloudwatch_log_group" "service" {
  for_each          = toset(["freeside", "finn", "dixie", "migrate"])
  name              = "/ecs/${local.prefix}/${each.key}"
  retention_in_days = 30
}

locals {
  # What ECS and the ALB check: the liveness route every service maps (MapLiveness("/health/live")), which answers
  # while the process serves HTTP. The full health routes (freeside and finn /health, dixie /api/health) also check
  # the database, Redis and the other services; checked by ECS or the ALB, a finn outage would make ECS replace every
  # dixie task. The launch gate, Prometheus and the dashboards read the full routes.
  health_paths = {
    freeside = "/health/live"
    finn     = "/health/live"
    dixie    = "/health/live"
  }

  connection_string_names = {
    freeside = "ConnectionStrings__Freeside"
    finn     = "ConnectionStrings__Finn"
    dixie    = "ConnectionStrings__Dixie"
  }
}

resource "aws_ecs_task_definition" "service" {
  for_each                 = local.ports
  family                   = "${local.prefix}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = local.sizes[each.key].cpu
  memory                   = local.sizes[each.key].memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  container_definitions = jsonencode([{
    name         = each.key
    image        = local.images[each.key]
    essential    = true
    stopTimeout  = local.stop_timeout_seconds
    portMappings = [{ containerPort = each.value, protocol = "tcp" }]
    environment = concat(local.common_environment, [
      # ServiceEndpoints binds 127.0.0.1 unless ASPNETCORE_URLS (or Urls) is set.
      { name = "ASPNETCORE_URLS", value = "http://+:${each.value}" },
      ], each.key == "freeside" ? [
      # x402: where payments go (the code's default is a development placeholder). The chain and asset keep the code's
      # defaults, USDC on Base Sepolia; X402__RpcUrl (a secret, below) must be an endpoint of that chain.
      { name = "X402__PayTo", value = var.x402_pay_to },
    ] : [])
    secrets = concat(
      [
        { name = local.connection_string_names[each.key], valueFrom = aws_secretsmanager_secret.database_url[each.key].arn },
        { name = "Redis__Configuration", valueFrom = aws_secretsmanager_secret.redis_configuration.arn },
      ],
      contains(tolist(local.keyring_services), each.key) ? [{ name = "Keyring__MasterKey", valueFrom = aws_secretsmanager_secret.keyring_master_key[each.key].arn }] : [],
      each.key == "freeside" ? [{ name = "X402__RpcUrl", valueFrom = aws_secretsmanager_secret.x402_rpc_url.arn }] : [],
    )
    healthCheck = {
      command     = ["CMD-SHELL", "curl -fsS http://127.0.0.1:${each.value}${local.health_paths[each.key]} || exit 1"]
      interval    = 15
      timeout     = 5
      retries     = 3
      startPeriod = 30
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.service[each.key].name
        awslogs-region        = var.region
        awslogs-stream-prefix = each.key
      }
    }
  }])
}

# One-shot migration task: `loa migrate` applies every service's migrations. The pipeline runs it with
# `aws ecs run-task` and stops the deploy unless it exits 0.
resource "aws_ecs_task_definition" "migrate" {
  family                   = "${local.prefix}-migrate"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  container_definitions = jsonencode([{
    name      = "migrate"
    image     = local.images["loa"]
    essential = true
    command   = ["migrate"]
    secrets = [
      { name = "ConnectionStrings__Freeside", valueFrom = aws_secretsmanager_secret.database_url["freeside"].arn },
      { name = "ConnectionStrings__Finn", valueFrom = aws_secretsmanager_secret.database_url["finn"].arn },
      { name = "ConnectionStrings__Dixie", valueFrom = aws_secretsmanager_secret.database_url["dixie"].arn },
    ]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.service["migrate"].name
        awslogs-region        = var.region
        awslogs-stream-prefix = "migrate"
      }
    }
  }])
}

# One-off `loa keys` tasks for the services that sign (docs/runbooks/key-rotation.md, scripts/loa-ecs.sh): the loa
# image with that service's connection string and keyring master key, in the services' subnets. The runbook's
# commands replace `command`; the default only lists the keys.
resource "aws_ecs_task_definition" "keys" {
  for_each                 = local.keyring_services
  family                   = "${local.prefix}-keys-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  container_definitions = jsonencode([{
    name      = "loa"
    image     = local.images["loa"]
    essential = true
    command   = ["keys", "list", "--service", each.key]
    secrets = [
      { name = local.connection_string_names[each.key], valueFrom = aws_secretsmanager_secret.database_url[each.key].arn },
      { name = "Keyring__MasterKey", valueFrom = aws_secretsmanager_secret.keyring_master_key[each.key].arn },
    ]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.service[each.key].name
        awslogs-region        = var.region
        awslogs-stream-prefix = "keys"
      }
    }
  }])
}

resource "aws_ecs_service" "freeside" {
  name                              = "freeside"
  cluster                           = aws_ecs_cluster.main.id
  task_definition                   = aws_ecs_task_definition.service["freeside"].arn
  desired_count                     = local.sizes.freeside.desired
  launch_type                       = "FARGATE"
  health_check_grace_period_seconds = 60

  network_configuration {
    subnets         = module.vpc.private_subnets
    security_groups = [aws_security_group.services.id]
  }
  load_balancer {
    target_group_arn = aws_lb_target_group.freeside.arn
    container_name   = "freeside"
    container_port   = local.ports.freeside
  }
  service_registries {
    registry_arn = aws_service_discovery_service.freeside.arn
  }
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  lifecycle {
    # Autoscaling owns the count; the pipeline rolls new revisions (after the migration gate), not terraform.
    ignore_changes = [desired_count, task_definition]
  }
  depends_on = [aws_lb_listener.https]
}

resource "aws_ecs_service" "finn" {
  name            = "finn"
  cluster         = aws_ecs_cluster.main.id
  task_definition = aws_ecs_task_definition.service["finn"].arn
  desired_count   = local.sizes.finn.desired
  launch_type     = "FARGATE"

  # Internal only: no load balancer, reachable at finn.<namespace>:3002 from the other tasks.
  network_configuration {
    subnets         = module.vpc.private_subnets
    security_groups = [aws_security_group.services.id]
  }
  service_registries {
    registry_arn = aws_service_discovery_service.finn.arn
  }
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  lifecycle {
    # Autoscaling owns the count; the pipeline rolls new revisions (after the migration gate), not terraform.
    ignore_changes = [desired_count, task_definition]
  }
}

resource "aws_ecs_service" "dixie" {
  name                              = "dixie"
  cluster                           = aws_ecs_cluster.main.id
  task_definition                   = aws_ecs_task_definition.service["dixie"].arn
  desired_count                     = local.sizes.dixie.desired
  launch_type                       = "FARGATE"
  health_check_grace_period_seconds = 60

  network_configuration {
    subnets         = module.vpc.private_subnets
    security_groups = [aws_security_group.services.id]
  }
  load_balancer {
    target_group_arn = aws_lb_target_group.dixie.arn
    container_name   = "dixie"
    container_port   = local.ports.dixie
  }
  service_registries {
    registry_arn = aws_service_discovery_service.dixie.arn
  }
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  lifecycle {
    # Autoscaling owns the count; the pipeline rolls new revisions (after the migration gate), not terraform.
    ignore_changes = [desired_count, task_definition]
  }
  # ECS refuses a target group no listener forwards to: dixie's is attached by the host rule, not the listener.
  depends_on = [aws_lb_listener_rule.dixie_host]
}

# Autoscaling: CPU target tracking for each service between its desired and max counts.
resource "aws_appautoscaling_target" "service" {
  for_each           = local.sizes
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.main.name}/${each.key}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = each.value.desired
  max_capacity       = each.value.max
  depends_on         = [aws_ecs_service.freeside, aws_ecs_service.finn, aws_ecs_service.dixie]
}

resource "aws_appautoscaling_policy" "cpu" {
  for_each           = local.sizes
  name               = "${local.prefix}-${each.key}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.service[each.key].service_namespace
  resource_id        = aws_appautoscaling_target.service[each.key].resource_id
  scalable_dimension = aws_appautoscaling_target.service[each.key].scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = 60
    scale_in_cooldown  = 120
    scale_out_cooldown = 60
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}
