variable "environment" {
  description = "Environment name; also the CloudWatch Environment dimension and the EMF Metrics__Emf__Environment value."
  type        = string
  default     = "staging"
  # Every name is built from arrakis-<environment>; the longest within the tightest AWS limit is the target group
  # arrakis-<environment>-freeside (32 characters), which leaves 15. RDS and ElastiCache identifiers also refuse a
  # trailing hyphen or two in a row. scripts/staging-deploy-all.sh checks the same rule in its pre-flight
  # (ENVIRONMENT_MAX_LENGTH, ENVIRONMENT_PATTERN); keep the two the same (DeployScriptTests reads both).
  validation {
    condition     = length(var.environment) <= 15 && can(regex("^[a-z](-?[a-z0-9])*$", var.environment))
    error_message = "environment must be at most 15 characters: lowercase letters, digits and single hyphens, starting with a letter and not ending with a hyphen (arrakis-<environment>-freeside names a target group, at most 32 characters)."
  }
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
  description = "Host name routed to dixie by the public ALB (everything else goes to freeside). The certificate must cover it, and its DNS record must point at the ALB (Terraform creates no DNS records). scripts/staging-deploy-all.sh passes the host of DIXIE_URL."
  type        = string
  default     = "dixie.staging.arrakis.community"
}

variable "x402_pay_to" {
  description = "Address that receives x402 payments (X402__PayTo). No default: the code's fallback is a public development account whose private key is well known."
  type        = string
  validation {
    condition     = can(regex("^0x[0-9a-fA-F]{40}$", var.x402_pay_to)) && lower(var.x402_pay_to) != "0xa0ee7a142d267c1f36714e4a8f75612f20a79720"
    error_message = "x402_pay_to must be your own 0x-prefixed 20-byte address, not the development placeholder."
  }
}

variable "x402_rpc_url" {
  description = "JSON-RPC endpoint of the payment chain (X402__RpcUrl): freeside reads X-Payment-Proof receipts and checks already-settled authorizations there. Often carries an API key, so it is stored as a secret."
  type        = string
  sensitive   = true
}

variable "alert_email" {
  description = "Optional e-mail subscribed to the alerts SNS topic."
  type        = string
  default     = ""
}

variable "db_instance_class" {
  description = "RDS class. Its max_connections (about RAM / 9.5 MB) must hold every replica's pool at the autoscaling maximum (local.pool_sizes × local.sizes[*].max, 105 here) plus the new tasks of a rollout (165 while freeside rolls, see data.tf): db.t3.micro has about 80 usable, db.t3.small about 200."
  type        = string
  default     = "db.t3.small"
}

variable "redis_node_type" {
  type    = string
  default = "cache.t4g.micro"
}
