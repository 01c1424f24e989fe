# Cloud Map: <service>.arrakis-<env>.local resolves to the tasks (A records), matching local.service_urls.
resource "aws_service_discovery_private_dns_namespace" "main" {
  name        = local.namespace
  description = "Service discovery for freeside, finn and dixie"
  vpc         = module.vpc.vpc_id
}

resource "aws_service_discovery_service" "freeside" {
  name = "freeside"
  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.main.id
    routing_policy = "MULTIVALUE"
    dns_records {
      type = "A"
      ttl  = 10
    }
  }
  health_check_custom_config {
    failure_threshold = 1
  }
}

resource "aws_service_discovery_service" "finn" {
  name = "finn"
  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.main.id
    routing_policy = "MULTIVALUE"
    dns_records {
      type = "A"
      ttl  = 10
    }
  }
  health_check_custom_config {
    failure_threshold = 1
  }
}

resource "aws_service_discovery_service" "dixie" {
  name = "dixie"
  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.main.id
    routing_policy = "MULTIVALUE"
    dns_records {
      type = "A"
      ttl  = 10
    }
  }
  health_check_custom_config {
    failure_threshold = 1
  }
}
