#!/usr/bin/env bash
# The launch gate (freeside-launch-gate.md §2) as the checklist names it: a thin wrapper over `loa gate`.
#
#   scripts/staging-smoke.sh [--test-key staging.pem] [--community-id test-community-staging-001]
#                            [--freeside-url URL] [--dixie-url URL] [--retries N] [--auto-seed] [--chaos] [--json]
#
# Env: FREESIDE_URL, DIXIE_URL, TEST_NFT_CONTRACT, TEST_NFT_TOKEN_ID, SEPOLIA_RPC_URL, STAGING_WALLET_KEY.
# The gate is an HTTP client of the deployment: it runs here, with the checkout's loa, whatever LOA names (the loa that
# runs `loa keys`, e.g. scripts/loa-ecs.sh, which runs nothing else).
# Exit 0 = PASS, 1 = a P0 check failed, 2 = only P1 failures. With --json the results document goes to stderr:
#   scripts/staging-smoke.sh --test-key .loa/staging.pem --community-id test-community-staging-001 --chaos --json 2>smoke-results.json
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec env -u LOA "$SCRIPT_DIR/loa.sh" gate "$@"
