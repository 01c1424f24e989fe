# G-9 monitoring: log metric filters (JSON and space-delimited), alarms into SNS, and the four dashboards.
# Every metric named here is in src/Arrakis.Shared/Hosting/MetricCatalog.cs (a test checks it).

resource "aws_sns_topic" "alerts" {
  name = "${local.prefix}-alerts"
}

resource "aws_sns_topic_subscription" "email" {
  count     = var.alert_email == "" ? 0 : 1
  topic_arn = aws_sns_topic.alerts.arn
  protocol  = "email"
  endpoint  = var.alert_email
}

locals {
  app_metrics   = "${local.prefix}/AppMetrics"
  agent_ns      = "${local.prefix}/agent"
  alarm_actions = [aws_sns_topic.alerts.arn]
}

# ---------------------------------------------------------------------------------------------------------------
# Log metric filters. Our services write one JSON object per line (JsonLinesFormatter) with a top-level "event".
# Space-delimited forms: the fields before "message" (timestamp, level, service, event, category) hold no spaces, so
# the first space-separated token always contains the event token. INVOKE_COMPLETE and REPUTATION_QUERY lines end with
# their latency as `"duration_ms": 1234 }`, so the number is the token before a lone "}". Those forms feed *Delimited
# metrics so they do not double-count with the JSON forms, which feed the metrics the alarms use.
# ---------------------------------------------------------------------------------------------------------------

resource "aws_cloudwatch_log_metric_filter" "jwt_validation_failed_json" {
  for_each       = toset(["freeside", "finn", "dixie"])
  name           = "${local.prefix}-${each.key}-jwt-validation-failed-json"
  log_group_name = aws_cloudwatch_log_group.service[each.key].name
  pattern        = "{ $.event = \"JWT_VALIDATION_FAILED\" }"
  metric_transformation {
    name          = "JwtValidationFailedCount"
    namespace     = local.app_metrics
    value         = "1"
    default_value = "0"
  }
}

resource "aws_cloudwatch_log_metric_filter" "jwt_validation_failed" {
  for_each       = toset(["freeside", "finn", "dixie"])
  name           = "${local.prefix}-${each.key}-jwt-validation-failed"
  log_group_name = aws_cloudwatch_log_group.service[each.key].name
  pattern        = "[start = \"*JWT_VALIDATION_FAILED*\", ...]"
  metric_transformation {
    name          = "JwtValidationFailedDelimitedCount"
    namespace     = local.app_metrics
    value         = "1"
    default_value = "0"
  }
}

resource "aws_cloudwatch_log_metric_filter" "conservation_violation_json" {
  name           = "${local.prefix}-conservation-violation-json"
  log_group_name = aws_cloudwatch_log_group.service["freeside"].name
  pattern        = "{ $.event = \"CONSERVATION_VIOLATION\" }"
  metric_transformation {
    name          = "ConservationViolationCount"
    namespace     = local.app_metrics
    value         = "1"
    default_value = "0"
  }
}

resource "aws_cloudwatch_log_metric_filter" "conservation_violation" {
  name           = "${local.prefix}-conservation-violation"
  log_group_name = aws_cloudwatch_log_group.service["freeside"].name
  pattern        = "[start = \"*CONSERVATION_VIOLATION*\", ...]"
  metric_transformation {
    name          = "ConservationViolationDelimitedCount"
    namespace     = local.app_metrics
    value         = "1"
    default_value = "0"
  }
}

resource "aws_cloudwatch_log_metric_filter" "invoke_latency_json" {
  name           = "${local.prefix}-invoke-latency-json"
  log_group_name = aws_cloudwatch_log_group.service["freeside"].name
  # Invokes refused before they ran (outcome "rejected": 400, 401, 402, 403, 409, 413, 429) take milliseconds; left
  # out, so a flood of them cannot pull the p99 latency alarm's statistic down. Calls that ran and failed slowly still
  # count.
  pattern = "{ $.event = \"INVOKE_COMPLETE\" && $.duration_ms = * && $.outcome != \"rejected\" }"
  metric_transformation {
    name      = "InvokeLatencyMs"
    namespace = local.app_metrics
    value     = "$.duration_ms"
    unit      = "Milliseconds"
  }
}

resource "aws_cloudwatch_log_metric_filter" "invoke_latency" {
  name           = "${local.prefix}-invoke-latency"
  log_group_name = aws_cloudwatch_log_group.service["freeside"].name
  pattern        = "[..., key = \"*duration_ms*\", duration_ms, end = \"}\"]"
  metric_transformation {
    name      = "InvokeLatencyMsDelimited"
    namespace = local.app_metrics
    value     = "$duration_ms"
    unit      = "Milliseconds"
  }
}

resource "aws_cloudwatch_log_metric_filter" "reputation_latency_json" {
  name           = "${local.prefix}-reputation-latency-json"
  log_group_name = aws_cloudwatch_log_group.service["finn"].name
  pattern        = "{ $.event = \"REPUTATION_QUERY\" && $.reputation_duration_ms = * }"
  metric_transformation {
    name      = "ReputationQueryLatencyMs"
    namespace = local.app_metrics
    value     = "$.reputation_duration_ms"
    unit      = "Milliseconds"
  }
}

resource "aws_cloudwatch_log_metric_filter" "reputation_latency" {
  name           = "${local.prefix}-reputation-latency"
  log_group_name = aws_cloudwatch_log_group.service["finn"].name
  pattern        = "[..., key = \"*reputation_duration_ms*\", reputation_duration_ms, end = \"}\"]"
  metric_transformation {
    name      = "ReputationQueryLatencyMsDelimited"
    namespace = local.app_metrics
    value     = "$reputation_duration_ms"
    unit      = "Milliseconds"
  }
}

# ---------------------------------------------------------------------------------------------------------------
# Alarms (names arrakis-<env>-<suffix>, per the launch checklist). "Within 60 s" alarms use one 60 s period.
# ---------------------------------------------------------------------------------------------------------------

locals {
  # freeside is the public API: its alarms keep the checklist's "api-" names.
  alarm_service_names = { freeside = "api", finn = "finn", dixie = "dixie" }
}

resource "aws_cloudwatch_metric_alarm" "ecs_cpu_high" {
  for_each            = local.alarm_service_names
  alarm_name          = "${local.prefix}-${each.value}-cpu-high"
  alarm_description   = "${each.key} CPU above 80% (fires within 60 s of a spike)"
  namespace           = "AWS/ECS"
  metric_name         = "CPUUtilization"
  dimensions          = { ClusterName = aws_ecs_cluster.main.name, ServiceName = each.key }
  statistic           = "Average"
  period              = 60
  evaluation_periods  = 1
  threshold           = 80
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "ecs_memory_high" {
  for_each            = local.alarm_service_names
  alarm_name          = "${local.prefix}-${each.value}-memory-high"
  alarm_description   = "${each.key} memory above 80% (fires within 60 s of a spike)"
  namespace           = "AWS/ECS"
  metric_name         = "MemoryUtilization"
  dimensions          = { ClusterName = aws_ecs_cluster.main.name, ServiceName = each.key }
  statistic           = "Average"
  period              = 60
  evaluation_periods  = 1
  threshold           = 80
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "finn_task_count" {
  alarm_name          = "${local.prefix}-finn-task-count"
  alarm_description   = "finn has no running task (finn has no load balancer health check)"
  namespace           = "ECS/ContainerInsights"
  metric_name         = "RunningTaskCount"
  dimensions          = { ClusterName = aws_ecs_cluster.main.name, ServiceName = "finn" }
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "rds_cpu_high" {
  alarm_name          = "${local.prefix}-rds-cpu-high"
  namespace           = "AWS/RDS"
  metric_name         = "CPUUtilization"
  dimensions          = { DBInstanceIdentifier = aws_db_instance.main.identifier }
  statistic           = "Average"
  period              = 300
  evaluation_periods  = 2
  threshold           = 80
  comparison_operator = "GreaterThanThreshold"
  alarm_actions       = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "rds_connections_high" {
  alarm_name          = "${local.prefix}-rds-connections-high"
  namespace           = "AWS/RDS"
  metric_name         = "DatabaseConnections"
  dimensions          = { DBInstanceIdentifier = aws_db_instance.main.identifier }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 2
  threshold           = 70
  comparison_operator = "GreaterThanThreshold"
  alarm_actions       = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "alb_5xx_errors" {
  alarm_name          = "${local.prefix}-alb-5xx-errors"
  namespace           = "AWS/ApplicationELB"
  metric_name         = "HTTPCode_ELB_5XX_Count"
  dimensions          = { LoadBalancer = aws_lb.public.arn_suffix }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 10
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "api_5xx_rate_high" {
  alarm_name          = "${local.prefix}-api-5xx-rate-high"
  alarm_description   = "More than 5% of ALB requests answered 5xx"
  evaluation_periods  = 5
  threshold           = 5
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions

  metric_query {
    id          = "e1"
    expression  = "IF(m1>0,(m2/m1)*100,0)"
    label       = "5xx rate %"
    return_data = true
  }
  metric_query {
    id = "m1"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "RequestCount"
      dimensions  = { LoadBalancer = aws_lb.public.arn_suffix }
      stat        = "Sum"
      period      = 60
    }
  }
  metric_query {
    id = "m2"
    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_ELB_5XX_Count"
      dimensions  = { LoadBalancer = aws_lb.public.arn_suffix }
      stat        = "Sum"
      period      = 60
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "api_health_check_failure" {
  alarm_name          = "${local.prefix}-api-health-check-failure"
  namespace           = "AWS/ApplicationELB"
  metric_name         = "HealthyHostCount"
  dimensions          = { LoadBalancer = aws_lb.public.arn_suffix, TargetGroup = aws_lb_target_group.freeside.arn_suffix }
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "dixie_health_check_failure" {
  alarm_name          = "${local.prefix}-dixie-health-check-failure"
  namespace           = "AWS/ApplicationELB"
  metric_name         = "HealthyHostCount"
  dimensions          = { LoadBalancer = aws_lb.public.arn_suffix, TargetGroup = aws_lb_target_group.dixie.arn_suffix }
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "agent_redis_cpu_high" {
  alarm_name          = "${local.prefix}-agent-redis-cpu-high"
  namespace           = "AWS/ElastiCache"
  metric_name         = "EngineCPUUtilization"
  dimensions          = { ReplicationGroupId = aws_elasticache_replication_group.main.id }
  statistic           = "Average"
  period              = 300
  evaluation_periods  = 2
  threshold           = 70
  comparison_operator = "GreaterThanThreshold"
  alarm_actions       = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "agent_redis_connections_high" {
  alarm_name          = "${local.prefix}-agent-redis-connections-high"
  namespace           = "AWS/ElastiCache"
  metric_name         = "CurrConnections"
  dimensions          = { ReplicationGroupId = aws_elasticache_replication_group.main.id }
  statistic           = "Average"
  period              = 300
  evaluation_periods  = 2
  threshold           = 500
  comparison_operator = "GreaterThanThreshold"
  alarm_actions       = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "agent_redis_evictions" {
  alarm_name          = "${local.prefix}-agent-redis-evictions"
  namespace           = "AWS/ElastiCache"
  metric_name         = "Evictions"
  dimensions          = { ReplicationGroupId = aws_elasticache_replication_group.main.id }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "agent_budget_overspend" {
  alarm_name          = "${local.prefix}-agent-budget-overspend"
  alarm_description   = "CRITICAL: committed + reserved exceeds the limit (conservation invariant I-1)"
  namespace           = local.agent_ns
  metric_name         = "agent_budget_overspend_cents"
  dimensions          = { Environment = var.environment }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "conservation_guard_failure" {
  alarm_name          = "${local.prefix}-conservation-guard-failure"
  namespace           = "Arrakis/Billing"
  metric_name         = "ConservationCheckFailed"
  dimensions          = { Environment = var.environment }
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "conservation_log_violation" {
  alarm_name          = "${local.prefix}-conservation-log-violation"
  alarm_description   = "CONSERVATION_VIOLATION logged by freeside"
  namespace           = local.app_metrics
  metric_name         = "ConservationViolationCount"
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "payment_failure" {
  alarm_name          = "${local.prefix}-payment-failure"
  namespace           = "Arrakis/Billing"
  metric_name         = "PaymentFailed"
  dimensions          = { Environment = var.environment }
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "jwt_validation_failure_spike" {
  alarm_name          = "${local.prefix}-jwt-validation-failure-spike"
  alarm_description   = "More than 10 rejected tokens a minute: auth chain broken or key compromise (scripts/revoke-staging-key.sh)"
  namespace           = "Arrakis/Auth"
  metric_name         = "JwtValidationFailure"
  dimensions          = { Environment = var.environment }
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 10
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "jwt_log_validation_failures" {
  alarm_name          = "${local.prefix}-jwt-log-validation-failures"
  alarm_description   = "POTENTIAL KEY COMPROMISE: JWT_VALIDATION_FAILED logged more than 5 times in 5 minutes; see scripts/revoke-staging-key.sh"
  namespace           = local.app_metrics
  metric_name         = "JwtValidationFailedCount"
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 5
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "invoke_latency_p99" {
  alarm_name          = "${local.prefix}-invoke-latency-p99"
  alarm_description   = "p99 invoke latency (INVOKE_COMPLETE duration_ms) above 10 s"
  namespace           = local.app_metrics
  metric_name         = "InvokeLatencyMs"
  extended_statistic  = "p99"
  period              = 300
  evaluation_periods  = 1
  threshold           = 10000
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# ---------------------------------------------------------------------------------------------------------------
# Dashboards: bodies are JSON templates in dashboards/ (tests read the same files).
# ---------------------------------------------------------------------------------------------------------------

locals {
  dashboard_vars = {
    env         = var.environment
    region      = var.region
    cluster     = local.prefix
    alb         = aws_lb.public.arn_suffix
    tg_freeside = aws_lb_target_group.freeside.arn_suffix
    tg_dixie    = aws_lb_target_group.dixie.arn_suffix
    db          = aws_db_instance.main.identifier
    redis       = aws_elasticache_replication_group.main.id
  }
}

resource "aws_cloudwatch_dashboard" "g9" {
  for_each       = toset(["overview", "service-health", "economic-health", "gateway-proxy"])
  dashboard_name = "${local.prefix}-${each.key}"
  dashboard_body = templatefile("${path.module}/dashboards/${each.key}.json.tftpl", local.dashboard_vars)
}
