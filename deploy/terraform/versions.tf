terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }
  # State lives in S3 with DynamoDB locking; pass the bucket with -backend-config (see README.md). The key below is
  # staging's: every other environment must pass its own, -backend-config=key=arrakis/<environment>/terraform.tfstate
  # (scripts/staging-deploy-all.sh always does), or it plans against staging's state.
  backend "s3" {
    key            = "arrakis/staging/terraform.tfstate"
    dynamodb_table = "arrakis-terraform-locks"
    encrypt        = true
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = {
      Project     = "arrakis"
      Environment = var.environment
      ManagedBy   = "terraform"
    }
  }
}
