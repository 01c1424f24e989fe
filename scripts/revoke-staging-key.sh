#!/usr/bin/env bash
# Emergency revocation of a signing key over `loa keys` (docs/runbooks/key-rotation.md, target: under 5 minutes).
#
#   scripts/revoke-staging-key.sh --kid KID [--service freeside|finn] [--data-dir D] [--jwks-url URL]
#                                 [--restart-ecs] [--no-wait] [--smoke-key PEM --community-id ID]
#                                 [--skip-smoke] [--dry-run]
#
# 1. Show the keys and confirm KID exists.
# 2. `loa keys revoke KID`: KID leaves the JWKS at once. If it was the active key, a pending key (or a fresh one)
#    takes over signing immediately; there is no overlap, so tokens signed with KID stop verifying.
# 3. Check KID is gone from the JWKS (replicas reload within 5 s).
# 4. Wait 60 s: verifiers cache a JWKS for at most 30 s and refetch on unknown kids (--no-wait skips it).
#    --restart-ecs also forces new deployments of the dependent ECS services (finn and dixie for a freeside key,
#    dixie for a finn key) to drop every cache at once.
# 5. Run the launch gate, then print the elapsed time against the 300 s budget and the post-incident checklist.
#
# Keyring location and env as in rotate-staging-keys.sh. Exit 0 when KID is revoked and the gate has no P0 failure
# (exit 0 or 2); 1 when a step failed, or the gate failed or did not run.
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOA="${LOA:-$SCRIPT_DIR/loa.sh}"

SERVICE=freeside
KID=""
DATA_DIR=""
JWKS_URL=""
RESTART_ECS=false
WAIT=true
SMOKE_KEY=""
COMMUNITY_ID=""
SKIP_SMOKE=false
DRY_RUN=false
FREESIDE_URL="${FREESIDE_URL:-http://localhost:3000}"
FINN_URL="${FINN_URL:-http://localhost:3002}"
DIXIE_URL="${DIXIE_URL:-http://localhost:3001}"
PREFIX="${PREFIX:-arrakis-staging}"
ECS_CLUSTER="${ECS_CLUSTER:-$PREFIX}"  # deploy/terraform names the cluster after the prefix

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "error: $1 needs a value" >&2; exit 1; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --kid)          need "$@"; KID="$2"; shift 2 ;;
    --service)      need "$@"; SERVICE="$2"; shift 2 ;;
    --data-dir)     need "$@"; DATA_DIR="$2"; shift 2 ;;
    --jwks-url)     need "$@"; JWKS_URL="$2"; shift 2 ;;
    --restart-ecs)  RESTART_ECS=true; shift ;;
    --no-wait)      WAIT=false; shift ;;
    --smoke-key)    need "$@"; SMOKE_KEY="$2"; shift 2 ;;
    --community-id) need "$@"; COMMUNITY_ID="$2"; shift 2 ;;
    --skip-smoke)   SKIP_SMOKE=true; shift ;;
    --dry-run)      DRY_RUN=true; shift ;;
    -h|--help)      usage; exit 0 ;;
    *)              echo "Unknown option: $1" >&2; usage >&2; exit 1 ;;
  esac
done
[[ -n "$KID" ]] || { echo "error: --kid is required (see: $LOA keys list --service $SERVICE)" >&2; usage >&2; exit 1; }
case "$SERVICE" in
  freeside) JWKS_URL="${JWKS_URL:-$FREESIDE_URL/.well-known/jwks.json}"; DEPENDENTS=(finn dixie) ;;
  finn)     JWKS_URL="${JWKS_URL:-$FINN_URL/.well-known/jwks.json}"; DEPENDENTS=(dixie) ;;
  *)        echo "error: --service must be freeside or finn" >&2; exit 1 ;;
esac
KEYS_ARGS=(--service "$SERVICE")
[[ -n "$DATA_DIR" ]] && KEYS_ARGS+=(--data-dir "$DATA_DIR")

if $DRY_RUN; then
  echo "[dry-run] emergency revocation plan for $SERVICE key $KID (JWKS $JWKS_URL)"
  echo "  1. $LOA keys list ${KEYS_ARGS[*]}"
  echo "  2. $LOA keys revoke ${KEYS_ARGS[*]} -- $KID"
  echo "  3. curl -sf $JWKS_URL | jq -e '[.keys[].kid] | index(\"$KID\") == null'"
  $RESTART_ECS && for s in "${DEPENDENTS[@]}"; do echo "  4. aws ecs update-service --cluster $ECS_CLUSTER --service $s --force-new-deployment"; done
  $WAIT && echo "  4. sleep 60   # verifier JWKS caches (30 s) expire"
  echo "  5. $SCRIPT_DIR/staging-smoke.sh --freeside-url $FREESIDE_URL --dixie-url $DIXIE_URL --retries 3${SMOKE_KEY:+ --test-key $SMOKE_KEY}${COMMUNITY_ID:+ --community-id $COMMUNITY_ID}"
  exit 0
fi

START=$(date +%s)
echo "== EMERGENCY: revoking $SERVICE key $KID =="
echo "-- 1. Keys before"
listing="$("$LOA" keys list "${KEYS_ARGS[@]}")"
echo "$listing"
if ! awk -v kid="$KID" '$1 == kid { found = 1 } END { exit !found }' <<<"$listing"; then
  echo "error: no $SERVICE key with kid $KID" >&2
  exit 1
fi

echo "-- 2. Revoke"
"$LOA" keys revoke "${KEYS_ARGS[@]}" -- "$KID"   # '--': a kid may start with '-' (keys made before 2026-11-29)

echo "-- 3. JWKS no longer lists $KID"
deadline=$(( $(date +%s) + 40 ))
while :; do
  if body="$(curl -sSf --max-time 5 "$JWKS_URL" 2>&1)"; then
    jq -e --arg kid "$KID" '[.keys[].kid] | index($kid) == null' >/dev/null 2>&1 <<<"$body" && break
    problem="$JWKS_URL still lists $KID after 40 s: check every replica reads the same keyring database"
  else
    # Not the keyring's fault: a wrong or unreachable URL (FREESIDE_URL defaults to localhost, whatever LOA revoked in).
    problem="could not read $JWKS_URL for 40 s ($body): $KID is revoked in the keyring; point FREESIDE_URL / FINN_URL or --jwks-url at the JWKS of the service whose keyring $LOA changed and check it by hand"
  fi
  if (( $(date +%s) > deadline )); then
    echo "error: $problem" >&2
    exit 1
  fi
  sleep 2
done
echo "   ✓ $KID is gone from $JWKS_URL; active: $(curl -sf --max-time 5 "$JWKS_URL" | jq -r '.keys[0].kid')"

echo "-- 4. Flush verifier caches"
if $RESTART_ECS; then
  for s in "${DEPENDENTS[@]}"; do
    aws ecs update-service --cluster "$ECS_CLUSTER" --service "$s" --force-new-deployment --query 'service.serviceName' --output text
  done
fi
if $WAIT; then
  echo "   waiting 60 s for JWKS caches (max-age 30 s) to expire everywhere"
  sleep 60
fi

SMOKE=0
if ! $SKIP_SMOKE; then
  echo "-- 5. Launch gate"
  SMOKE_ARGS=(--freeside-url "$FREESIDE_URL" --dixie-url "$DIXIE_URL" --retries 3)
  [[ -n "$SMOKE_KEY" ]] && SMOKE_ARGS+=(--test-key "$SMOKE_KEY")
  [[ -n "$COMMUNITY_ID" ]] && SMOKE_ARGS+=(--community-id "$COMMUNITY_ID")
  set +e
  # The gate is an HTTP client of the deployment: it runs here, with the checkout's loa, whatever LOA runs loa keys with.
  env -u LOA "$SCRIPT_DIR/staging-smoke.sh" "${SMOKE_ARGS[@]}"
  SMOKE=$?
  set -e
fi

ELAPSED=$(( $(date +%s) - START ))
echo "== Revoked $KID in ${ELAPSED}s (budget 300 s: $([[ $ELAPSED -le 300 ]] && echo within || echo OVER)); gate exit $SMOKE =="
cat <<CHECKLIST
Post-incident checklist:
  [ ] Find how the key leaked; rotate any secret stored beside it (Secrets Manager: $PREFIX/$SERVICE/*)
  [ ] Search the logs for tokens signed with $KID after the revocation (JWT_VALIDATION_FAILED with "unknown kid: $KID", or "bad signature" for tokens without a kid)
  [ ] Replace any operator test key that was $KID: openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out staging.pem && $LOA keys import ${KEYS_ARGS[*]} --pem staging.pem
  [ ] Record the timeline (start, revoke, JWKS clean, gate green) in the incident report
CHECKLIST
# The gate answers 0 (PASS), 1 (a P0 failed) or 2 (P1 failures only); anything else means it did not run (loa missing
# or crashed, interrupted), and nothing verified the platform after the revocation.
case "$SMOKE" in
  0|2) exit 0 ;;
  1) exit 1 ;;
  *) echo "error: the launch gate did not run to the end (exit $SMOKE): $KID is revoked but the platform is not verified; run $SCRIPT_DIR/staging-smoke.sh again" >&2; exit 1 ;;
esac
