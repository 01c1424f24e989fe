#!/usr/bin/env bash
# Normal signing-key rotation over `loa keys` (docs/runbooks/key-rotation.md): dual-publish → wait → switch → verify.
#
#   scripts/rotate-staging-keys.sh [--service freeside|finn] [--propagation-seconds N] [--data-dir D]
#                                  [--jwks-url URL] [--log-group G] [--smoke-key PEM --community-id ID]
#                                  [--skip-smoke] [--dry-run]
#
# 1. Record the active kid (`loa keys list`).
# 2. Dual-publish: `loa keys rotate --propagation-seconds N` adds a pending key; it is in the JWKS, not signing.
# 3. Check the JWKS serves both kids (replicas reload the keyring within 5 s; the JWKS max-age is 30 s).
# 4. Wait N seconds (default 60: twice the JWKS max-age, so every verifier has fetched the new key).
# 5. Switch: the pending key becomes active on its promote time; check it is keys[0] of the JWKS.
# 6. Look for JWT_VALIDATION_FAILED in the service log (with --log-group, via CloudWatch Logs).
# 7. Run the launch gate (health, JWKS, and the keyed phases with --smoke-key).
# The old key stays published as "retired" until the longest token lifetime has passed, then drops out.
#
# Where the keyring lives: --data-dir (SQLite, e.g. .loa for `loa up`) or ConnectionStrings__Freeside /
# ConnectionStrings__Finn plus the master key (Keyring__MasterKey) in the environment for PostgreSQL in AWS.
# Env: FREESIDE_URL [http://localhost:3000], FINN_URL [http://localhost:3002], DIXIE_URL [http://localhost:3001],
# LOA [scripts/loa.sh]: the loa that runs `loa keys` (e.g. scripts/loa-ecs.sh for the keyring in AWS).
# Exit 0 when the rotation is verified and the gate has no P0 failure (exit 0 or 2); 1 when a step failed (the output
# says how to back out) or the gate failed or did not run.
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOA="${LOA:-$SCRIPT_DIR/loa.sh}"

SERVICE=freeside
PROPAGATION=60
DATA_DIR=""
JWKS_URL=""
LOG_GROUP=""
SMOKE_KEY=""
COMMUNITY_ID=""
SKIP_SMOKE=false
DRY_RUN=false
FREESIDE_URL="${FREESIDE_URL:-http://localhost:3000}"
FINN_URL="${FINN_URL:-http://localhost:3002}"
DIXIE_URL="${DIXIE_URL:-http://localhost:3001}"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "error: $1 needs a value" >&2; exit 1; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --service)             need "$@"; SERVICE="$2"; shift 2 ;;
    --propagation-seconds) need "$@"; PROPAGATION="$2"; shift 2 ;;
    --data-dir)            need "$@"; DATA_DIR="$2"; shift 2 ;;
    --jwks-url)            need "$@"; JWKS_URL="$2"; shift 2 ;;
    --log-group)           need "$@"; LOG_GROUP="$2"; shift 2 ;;
    --smoke-key)           need "$@"; SMOKE_KEY="$2"; shift 2 ;;
    --community-id)        need "$@"; COMMUNITY_ID="$2"; shift 2 ;;
    --skip-smoke)          SKIP_SMOKE=true; shift ;;
    --dry-run)             DRY_RUN=true; shift ;;
    -h|--help)             usage; exit 0 ;;
    *)                     echo "Unknown option: $1" >&2; usage >&2; exit 1 ;;
  esac
done
case "$SERVICE" in
  freeside) JWKS_URL="${JWKS_URL:-$FREESIDE_URL/.well-known/jwks.json}" ;;
  finn)     JWKS_URL="${JWKS_URL:-$FINN_URL/.well-known/jwks.json}" ;;
  *)        echo "error: --service must be freeside or finn" >&2; exit 1 ;;
esac
[[ "$PROPAGATION" =~ ^[0-9]+$ ]] || { echo "error: --propagation-seconds must be a whole number" >&2; exit 1; }

KEYS_ARGS=(--service "$SERVICE")
[[ -n "$DATA_DIR" ]] && KEYS_ARGS+=(--data-dir "$DATA_DIR")

# Polls the JWKS until the jq test holds (or the deadline passes). JWKS_ERROR is curl's error when the last attempt
# could not read the JWKS at all (a wrong or unreachable URL), empty when it read one that does not pass the test.
JWKS_ERROR=""
wait_jwks() {
  local test="$1" deadline=$(( $(date +%s) + $2 )) body
  while (( $(date +%s) <= deadline )); do
    if body="$(curl -sSf --max-time 5 -H 'Cache-Control: no-cache' "$JWKS_URL" 2>&1)"; then
      JWKS_ERROR=""
      jq -e "$test" >/dev/null 2>&1 <<<"$body" && return 0
    else
      JWKS_ERROR="$body"
    fi
    sleep 2
  done
  return 1
}
jwks_unread() {
  [[ -n "$JWKS_ERROR" ]] || return 1
  echo "error: could not read $JWKS_URL for 40 s ($JWKS_ERROR): point FREESIDE_URL / FINN_URL or --jwks-url at the JWKS of the service whose keyring $LOA changed." >&2
}

if $DRY_RUN; then
  cat <<PLAN
[dry-run] rotation plan for $SERVICE (JWKS $JWKS_URL)
  1. $LOA keys list ${KEYS_ARGS[*]}                       # note the active kid (OLD)
  2. $LOA keys rotate ${KEYS_ARGS[*]} --propagation-seconds $PROPAGATION   # prints ROTATED kid=NEW status=pending
  3. curl -sf $JWKS_URL | jq '[.keys[].kid]'              # must list OLD and NEW (within 40 s)
  4. sleep $PROPAGATION                                    # every verifier refetches within 30 s
  5. curl -sf $JWKS_URL | jq -r '.keys[0].kid'            # must be NEW (the keyring promotes within 5 s)
  6. aws logs filter-log-events --log-group-name ${LOG_GROUP:-/ecs/arrakis-staging/$SERVICE} --filter-pattern JWT_VALIDATION_FAILED --start-time <rotation start ms>
  7. $SCRIPT_DIR/staging-smoke.sh --freeside-url $FREESIDE_URL --dixie-url $DIXIE_URL --retries 3${SMOKE_KEY:+ --test-key $SMOKE_KEY}${COMMUNITY_ID:+ --community-id $COMMUNITY_ID}
PLAN
  exit 0
fi

START=$(date +%s)
echo "== Rotating the $SERVICE signing key =="
echo "-- 1. Current keys"
listing="$("$LOA" keys list "${KEYS_ARGS[@]}")"
echo "$listing"
OLD_KID="$(awk '$2 == "active" { print $1; exit }' <<<"$listing")"
[[ -n "$OLD_KID" ]] || { echo "error: no active key found for $SERVICE" >&2; exit 1; }
echo "   active kid: $OLD_KID"

echo "-- 2. Dual-publish a new pending key"
rotated="$("$LOA" keys rotate "${KEYS_ARGS[@]}" --propagation-seconds "$PROPAGATION")"
echo "   $rotated"
NEW_KID="$(sed -n 's/.*kid=\([^ ]*\).*/\1/p' <<<"$rotated")"
[[ -n "$NEW_KID" ]] || { echo "error: could not read the new kid from: $rotated" >&2; exit 1; }

echo "-- 3. JWKS serves both kids"
if (( PROPAGATION > 0 )); then
  if ! wait_jwks "[.keys[].kid] | (index(\"$OLD_KID\") != null and index(\"$NEW_KID\") != null)" 40; then
    if jwks_unread; then
      echo "       $NEW_KID is pending in the keyring, unchecked: check that JWKS by hand, or back out with: $LOA keys revoke ${KEYS_ARGS[*]} -- $NEW_KID" >&2
      exit 1
    fi
    echo "error: $JWKS_URL does not list both $OLD_KID and $NEW_KID after 40 s." >&2
    echo "       Back out with: $LOA keys revoke ${KEYS_ARGS[*]} -- $NEW_KID" >&2
    exit 1
  fi
  echo "   ✓ $OLD_KID and $NEW_KID published"
  echo "-- 4. Waiting ${PROPAGATION}s for every verifier to fetch the new key"
  sleep "$PROPAGATION"
else
  echo "   (--propagation-seconds 0: switching at once, no overlap)"
fi

echo "-- 5. Switch: $NEW_KID signs"
if ! wait_jwks ".keys[0].kid == \"$NEW_KID\"" 40; then
  jwks_unread || echo "error: $NEW_KID is not the first JWKS key 40 s after its promote time." >&2
  "$LOA" keys list "${KEYS_ARGS[@]}" >&2 || true
  exit 1
fi
"$LOA" keys list "${KEYS_ARGS[@]}"
echo "   ✓ $NEW_KID active; $OLD_KID stays published as retired until issued tokens expire"

echo "-- 6. JWT_VALIDATION_FAILED since the rotation started"
if [[ -n "$LOG_GROUP" ]]; then
  failures=$(aws logs filter-log-events --log-group-name "$LOG_GROUP" --filter-pattern JWT_VALIDATION_FAILED \
    --start-time $(( START * 1000 )) --query 'length(events)' --output text)
  echo "   $failures event(s) in $LOG_GROUP"
  if [[ "$failures" != "0" ]]; then
    echo "warning: token validation failures during the rotation; inspect them before retiring anything else" >&2
  fi
else
  echo "   (no --log-group: check the service log for JWT_VALIDATION_FAILED lines since $(date -u -d "@$START" +%H:%M:%SZ))"
fi

if $SKIP_SMOKE; then
  echo "-- 7. Smoke skipped (--skip-smoke)"
  exit 0
fi
echo "-- 7. Launch gate"
SMOKE_ARGS=(--freeside-url "$FREESIDE_URL" --dixie-url "$DIXIE_URL" --retries 3)
[[ -n "$SMOKE_KEY" ]] && SMOKE_ARGS+=(--test-key "$SMOKE_KEY")
[[ -n "$COMMUNITY_ID" ]] && SMOKE_ARGS+=(--community-id "$COMMUNITY_ID")
set +e
# The gate is an HTTP client of the deployment: it runs here, with the checkout's loa, whatever LOA runs loa keys with.
env -u LOA "$SCRIPT_DIR/staging-smoke.sh" "${SMOKE_ARGS[@]}"
smoke=$?
set -e
echo "== Rotation of $SERVICE: $OLD_KID → $NEW_KID in $(( $(date +%s) - START ))s; gate exit $smoke =="
# The gate answers 0 (PASS), 1 (a P0 failed) or 2 (P1 failures only); anything else means it did not run (loa missing
# or crashed, interrupted): nothing verified the deployment, so that is no success either.
case "$smoke" in
  0|2) exit 0 ;;
  1) exit 1 ;;
  *) echo "error: the launch gate did not run to the end (exit $smoke): the rotation is done but not verified; run $SCRIPT_DIR/staging-smoke.sh again" >&2; exit 1 ;;
esac
