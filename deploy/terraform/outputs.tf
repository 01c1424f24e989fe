output "alb_dns_name" {
  value = aws_lb.public.dns_name
}

output "cluster_name" {
  value = aws_ecs_cluster.main.name
}

output "migrate_task_definition" {
  value = aws_ecs_task_definition.migrate.arn
}

output "private_subnets" {
  value = module.vpc.private_subnets
}

output "services_security_group" {
  value = aws_security_group.services.id
}

output "ecr_repositories" {
  value = { for k, r in aws_ecr_repository.images : k => r.repository_url }
}

output "alerts_topic_arn" {
  value = aws_sns_topic.alerts.arn
}
