#!/usr/bin/env bash
# Seeds the staging launch checklist's test data; a thin wrapper over `loa seed`.
# Usage: seed-staging-test-data.sh [--db-url URL | --freeside-url URL --key PEM | --ecs-exec --cluster C [--task-definition T] | --dry-run]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if command -v loa >/dev/null 2>&1; then
  exec loa seed "$@"
fi
exec dotnet run --project "$here/src/Arrakis.Cli" -v q -- seed "$@"
