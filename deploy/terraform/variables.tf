variable "environment" {
  description = "Environment name; also the CloudWatch Environment dimension and the EMF Metrics__Emf__Environment value."
  type        = string
  default     = "staging"
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "vpc_cidr" {
  type    = string
  default = "10.40.0.0/16"
}

variable "image_tag" {
  description = "Image tag pushed by .github/workflows/deploy-staging.yml (the git SHA)."
  type        = string
  default     = "latest"
}

variable "certificate_arn" {
  description = "ACM certificate for the public ALB's HTTPS listener."
  type        = string
}

variable "dixie_host" {
  description = "Host name routed to dixie by the public ALB (everything else goes to freeside)."
  type        = string
  default     = "dixie.staging.arrakis.example"
}

variable "alert_email" {
  description = "Optional e-mail subscribed to the alerts SNS topic."
  type        = string
  default     = ""
}

variable "db_instance_class" {
  type    = string
  default = "db.t3.micro"
}

variable "redis_node_type" {
  type    = string
  default = "cache.t4g.micro"
}
