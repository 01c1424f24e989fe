#!/usr/bin/env bash
# Seeds the staging launch checklist's test data; a thin wrapper over `loa seed`, run as staging-smoke.sh runs `loa gate`:
# with this checkout's loa (scripts/loa.sh), neither a `loa` found on PATH nor whatever LOA names (the loa that runs
# `loa keys`, e.g. scripts/loa-ecs.sh, which runs nothing else).
# Usage: seed-staging-test-data.sh [--db-url URL | --freeside-url URL --key PEM | --ecs-exec --cluster C [--task-definition T] | --dry-run]
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec env -u LOA "$SCRIPT_DIR/loa.sh" seed "$@"
