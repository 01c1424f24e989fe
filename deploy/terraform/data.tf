# PostgreSQL (one database, one schema per service) and a Redis replication group, both private.
resource "aws_db_subnet_group" "main" {
  name       = "${local.prefix}-db"
  subnet_ids = module.vpc.private_subnets
}

resource "random_password" "db" {
  length  = 32
  special = false
}

resource "aws_db_instance" "main" {
  identifier                 = "${local.prefix}-postgres"
  engine                     = "postgres"
  engine_version             = "16"
  instance_class             = var.db_instance_class
  allocated_storage          = 20
  max_allocated_storage      = 100
  storage_encrypted          = true
  db_name                    = "arrakis"
  username                   = "arrakis"
  password                   = random_password.db.result
  db_subnet_group_name       = aws_db_subnet_group.main.name
  vpc_security_group_ids     = [aws_security_group.data.id]
  publicly_accessible        = false
  backup_retention_period    = 7
  deletion_protection        = true
  skip_final_snapshot        = false
  final_snapshot_identifier  = "${local.prefix}-postgres-final"
  auto_minor_version_upgrade = true
}

resource "aws_elasticache_subnet_group" "main" {
  name       = "${local.prefix}-redis"
  subnet_ids = module.vpc.private_subnets
}

resource "random_password" "redis" {
  length  = 32
  special = false
}

# noeviction: Redis holds the replay cache (every token id until it expires) and the rate-limit windows, all with TTLs.
# The default policy (volatile-lru) evicts exactly those keys under memory pressure, which would accept a replayed
# token or reset a rate limit without a word; a full Redis must refuse writes instead (the agent-redis-evictions alarm
# and the launch checklist expect no evictions).
resource "aws_elasticache_parameter_group" "redis" {
  name   = "${local.prefix}-redis7"
  family = "redis7"
  parameter {
    name  = "maxmemory-policy"
    value = "noeviction"
  }
}

resource "aws_elasticache_replication_group" "main" {
  replication_group_id       = "${local.prefix}-redis"
  description                = "Arrakis replay cache and invalidation bus"
  engine                     = "redis"
  engine_version             = "7.1"
  node_type                  = var.redis_node_type
  num_cache_clusters         = 2
  automatic_failover_enabled = true
  port                       = 6379
  parameter_group_name       = aws_elasticache_parameter_group.redis.name
  subnet_group_name          = aws_elasticache_subnet_group.main.name
  security_group_ids         = [aws_security_group.data.id]
  at_rest_encryption_enabled = true
  transit_encryption_enabled = true
  auth_token                 = random_password.redis.result
}

# Secrets Manager: database URLs and the Redis configuration are written by Terraform; the keyring master keys are
# created empty and filled once by the bootstrap in README.md, so they never enter the Terraform state.
locals {
  # Connections per replica. At the autoscaling maximum (6 freeside, 6 finn, 3 dixie) that is 6×10 + 6×5 + 3×5 = 105.
  # A rollout starts the new tasks before it stops the old (ECS's deployment maximum_percent, 200): the pipeline rolls
  # freeside alone (12 tasks, +60), then finn and dixie (+30 +15 with --parallel), so the peak is 165, within
  # db.t3.small's max_connections (about 199) with room for the migration or a loa keys task and psql. A change that
  # makes ECS roll all three at once (their network configuration, say) needs 210 at full scale: apply it below the
  # maximum. Freeside's ledger runs at most 4 calls per core at once (Ledger__MaxConcurrentWrites) and queues the rest
  # in the process, so 10 is enough.
  pool_sizes = { freeside = 10, dixie = 5, finn = 5 }
  # Services that sign tokens and keep a keyring (dixie only verifies).
  keyring_services = toset(["freeside", "finn"])
}

resource "aws_secretsmanager_secret" "database_url" {
  for_each = local.ports
  name     = "${local.prefix}/${each.key}/database-url"
}

resource "aws_secretsmanager_secret_version" "database_url" {
  for_each      = local.ports
  secret_id     = aws_secretsmanager_secret.database_url[each.key].id
  secret_string = "Host=${aws_db_instance.main.address};Port=5432;Database=arrakis;Username=arrakis;Password=${random_password.db.result};SSL Mode=Require;Search Path=${each.key};Maximum Pool Size=${local.pool_sizes[each.key]}"
}

resource "aws_secretsmanager_secret" "keyring_master_key" {
  for_each    = local.keyring_services
  name        = "${local.prefix}/${each.key}/keyring-master-key"
  description = "Base64 32-byte key that encrypts ${each.key}'s signing keys at rest (Keyring__MasterKey). Set by the bootstrap."
}

resource "aws_secretsmanager_secret" "x402_rpc_url" {
  name = "${local.prefix}/freeside/x402-rpc-url"
}

resource "aws_secretsmanager_secret_version" "x402_rpc_url" {
  secret_id     = aws_secretsmanager_secret.x402_rpc_url.id
  secret_string = var.x402_rpc_url
}

resource "aws_secretsmanager_secret" "redis_configuration" {
  name = "${local.prefix}/redis-configuration"
}

resource "aws_secretsmanager_secret_version" "redis_configuration" {
  secret_id     = aws_secretsmanager_secret.redis_configuration.id
  secret_string = "${aws_elasticache_replication_group.main.primary_endpoint_address}:6379,ssl=true,password=${random_password.redis.result},abortConnect=false"
}
