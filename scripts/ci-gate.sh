#!/usr/bin/env bash
# The launch gate for real, as CI runs it (issue 7):
#   1. `loa up` on SQLite (it seeds), then the full gate with --chaos --json three times in a row. freeside's x402 reads
#      a local anvil chain (chain id 84532, the test EIP-3009 token at the Base Sepolia USDC address, a fresh funded
#      wallet), and run 1 exports SEPOLIA_RPC_URL / STAGING_WALLET_KEY so P1-8's on-chain step pays USDC and must PASS
#      with a credit note that lands in the ledger; runs 2 and 3 leave it unset (that step SKIPs);
#   2. a multi-replica run: two freeside and two finn processes on PostgreSQL + Redis, one dixie, round-robin
#      proxies in front, the full gate against the proxy, then the conservation audit.
# Requires: a Release build and `npm ci` in tests/x402-chain (scripts/test.sh does both), and for step 2 the
# environment from scripts/test-services.sh. `--single-only` runs step 1 only, `--multi-only` step 2 only.
# Usage: scripts/ci-gate.sh [--single-only | --multi-only]
set -euo pipefail
case "${1:-}" in
  -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;;
  ""|--single-only|--multi-only) [ $# -le 1 ] || { echo "ci-gate.sh: one option at most (see --help)" >&2; exit 2; } ;;
  *) echo "ci-gate.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${GATE_OUT:-$ROOT/artifacts/gate}"
BIN="$ROOT/artifacts/bin"
CFG="${CONFIGURATION:-release}"
LOA=(dotnet "$BIN/Arrakis.Cli/$CFG/loa.dll")
mkdir -p "$OUT"
PIDS=()
cleanup() { # TERM, up to 15 s to exit cleanly, then KILL: a stuck child must never hang CI
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 30); do
    alive=0; for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0; sleep 0.5
  done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

wait_ready() { # url timeout_s
  for _ in $(seq 1 "$2"); do curl -sf -o /dev/null "$1" && return 0; sleep 1; done
  echo "not ready: $1" >&2; return 1
}

# Required: exit 0, no P0/P1 FAIL, and the only SKIP allowed is the optional on-chain x402 step. With "onchain" as
# the fourth argument that step must have run and passed: a PASS record with a credit note and no SKIP at all.
check_run() { # json-file exit-code label [onchain]
  python3 - "$1" "$2" "$3" "${4:-}" <<'PY'
import json, sys
path, code, label, onchain = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "onchain"
doc = json.load(open(path))
fails = [r for r in doc["results"] if r["status"] == "FAIL"]
skips = [r for r in doc["results"] if r["status"] == "SKIP" and (onchain or "on-chain" not in r["name"])]
paid = [r for r in doc["results"] if r["status"] == "PASS" and r["name"] == "x402 on-chain settlement + credit note issued"]
print(f"{label}: exit={code} p0={doc['p0']} p1={doc['p1']}" + (f" on-chain={'PASS' if paid else 'missing'}" if onchain else ""))
for r in fails + skips:
    print(f"  {r['status']} [{r['priority']}] {r['name']} — {r['classification']}: {r['detail']}")
sys.exit(0 if code == 0 and doc["exit_code"] == 0 and not fails and not skips and (paid or not onchain) else 1)
PY
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# anvil on a free loopback port, readied by tests/x402-chain/devchain.mjs; sets RPC_URL, STAGING_WALLET_KEY,
# WALLET_ADDRESS and PAY_TO. anvil's PID joins PIDS, so cleanup stops it with everything else.
start_chain() {
  local tools="$ROOT/tests/x402-chain" port
  local anvil="$tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
  [ -x "$anvil" ] || { echo "anvil not found: run 'npm ci' in tests/x402-chain (scripts/test.sh does)" >&2; return 1; }
  port="$(free_port)"
  "$anvil" --host 127.0.0.1 --port "$port" --chain-id 84532 --silent >"$OUT/anvil.log" 2>&1 &
  PIDS+=($!)
  RPC_URL="http://127.0.0.1:$port"
  for _ in $(seq 1 50); do
    curl -sf -o /dev/null -H 'content-type: application/json' -d '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' "$RPC_URL" && break
    sleep 0.2
  done
  local line
  while IFS= read -r line; do
    case "$line" in
      STAGING_WALLET_KEY=*) STAGING_WALLET_KEY="${line#*=}" ;;
      WALLET_ADDRESS=*) WALLET_ADDRESS="${line#*=}" ;;
      PAY_TO=*) PAY_TO="${line#*=}" ;;
    esac
  done < <(cd "$tools" && RPC_URL="$RPC_URL" node devchain.mjs)
  [ -n "${STAGING_WALLET_KEY:-}" ] && [ -n "${PAY_TO:-}" ] || { echo "devchain.mjs did not ready the chain" >&2; return 1; }
  echo "anvil $RPC_URL (chain 84532): wallet $WALLET_ADDRESS funded, freeside payTo $PAY_TO"
}

if [ "${1:-}" != "--multi-only" ]; then
echo "== single process: loa up (SQLite) + gate x3 (run 1 pays on-chain on a local anvil)"
start_chain
DATA="$(mktemp -d)"
X402__RpcUrl="$RPC_URL" X402__PayTo="$PAY_TO" X402__Confirmations=1 "${LOA[@]}" up --data-dir "$DATA" >"$OUT/loa-up.log" 2>&1 &
PIDS+=($!)
wait_ready http://127.0.0.1:3000/health 90
wait_ready http://127.0.0.1:3001/api/health 30
for i in 1 2 3; do
  chain=(); onchain=""
  if [ "$i" = 1 ]; then chain=(SEPOLIA_RPC_URL="$RPC_URL" STAGING_WALLET_KEY="$STAGING_WALLET_KEY"); onchain=onchain; fi
  set +e
  env "${chain[@]}" "${LOA[@]}" gate --test-key "$DATA/staging.pem" --community-id test-community-staging-001 --chaos --json --retries 3 \
    --freeside-url http://127.0.0.1:3000 --dixie-url http://127.0.0.1:3001 >"$OUT/gate-run-$i.txt" 2>"$OUT/gate-run-$i.json"
  code=$?
  set -e
  cat "$OUT/gate-run-$i.txt"
  check_run "$OUT/gate-run-$i.json" "$code" "gate run $i" $onchain
done
# Run 1's payment is in the ledger: exactly one x402 credit lot, for the seeded community, of what the wallet paid.
python3 - "$DATA/freeside.db" <<'PY'
import sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute("SELECT id, community_id, amount_micro FROM credit_lots WHERE source = 'x402'").fetchall()
print("x402 credit lots:", rows)
sys.exit(0 if len(rows) == 1 and rows[0][1] == "test-community-staging-001" and rows[0][2] > 0 else 1)
PY
# The operator's on-demand audit (admin route) — it also refreshes the budget gauges before the scrape.
ADMIN="$("${LOA[@]}" jwt sign --key "$DATA/staging.pem" --aud arrakis-admin --claim role=operator)"
curl -sf http://127.0.0.1:3000/api/v1/admin/conservation -H "Authorization: Bearer $ADMIN" >"$OUT/audit-route-single.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("admin audit passed:", d.get("passed")); sys.exit(0 if d.get("passed") else 1)' "$OUT/audit-route-single.json"
curl -s http://127.0.0.1:3000/metrics >"$OUT/freeside-metrics.txt"
curl -s http://127.0.0.1:3002/metrics >"$OUT/finn-metrics.txt"
curl -s http://127.0.0.1:3001/metrics >"$OUT/dixie-metrics.txt"
# Every metric a Prometheus rule or Grafana dashboard names must really be emitted after a gate run.
python3 scripts/check-emitted-metrics.py deploy "$OUT/freeside-metrics.txt" "$OUT/finn-metrics.txt" "$OUT/dixie-metrics.txt"
"${LOA[@]}" audit --data-dir "$DATA" | tee "$OUT/audit-single.txt"
cleanup; PIDS=()
fi
[ "${1:-}" = "--single-only" ] && { echo "== launch gate: single-process runs passed"; exit 0; }

P=${MULTI_PORT_BASE:-3100}
FS_LB=$P; DX=$((P+1)); FN_LB=$((P+2)); FS1=$((P+10)); FS2=$((P+11)); FN1=$((P+20)); FN2=$((P+21))
echo "== multi-replica: 2 freeside + 2 finn on PostgreSQL + Redis, 1 dixie"
: "${ARRAKIS_TEST_PG:?run scripts/test-services.sh first}"
DB="arrakis_gate_$RANDOM$RANDOM"
psql "postgresql://postgres@127.0.0.1:${ARRAKIS_PG_PORT:-55432}/postgres" -qc "CREATE DATABASE $DB" >/dev/null
echo "   database $DB"
BASE="Host=127.0.0.1;Port=${ARRAKIS_PG_PORT:-55432};Username=postgres;Database=$DB;Maximum Pool Size=40"
export ConnectionStrings__Freeside="$BASE;Search Path=freeside"
export ConnectionStrings__Finn="$BASE;Search Path=finn"
export ConnectionStrings__Dixie="$BASE;Search Path=dixie"
export Redis__Configuration="$ARRAKIS_TEST_REDIS"
export Keyring__MasterKey="$(openssl rand -base64 32)"
export LOA_DATA_DIR="$(mktemp -d)"
export Services__FreesideUrl=http://127.0.0.1:$FS_LB Services__DixieUrl=http://127.0.0.1:$DX Services__FinnUrl=http://127.0.0.1:$FN_LB
"${LOA[@]}" migrate
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$LOA_DATA_DIR/staging.pem" 2>/dev/null
"${LOA[@]}" keys import --service freeside --pem "$LOA_DATA_DIR/staging.pem" --kid staging-ci
"${LOA[@]}" seed --db-url "$ConnectionStrings__Freeside"
host() { # service port
  dotnet "$BIN/Arrakis.${1^}.Host/$CFG/arrakis-$1.dll" --urls "http://127.0.0.1:$2" >"$OUT/$1-$2.log" 2>&1 &
  PIDS+=($!)
}
host freeside $FS1; host freeside $FS2; host finn $FN1; host finn $FN2; host dixie $DX
"${LOA[@]}" balance --listen http://127.0.0.1:$FS_LB --to http://127.0.0.1:$FS1,http://127.0.0.1:$FS2 >"$OUT/lb-freeside.log" 2>&1 &
PIDS+=($!)
"${LOA[@]}" balance --listen http://127.0.0.1:$FN_LB --to http://127.0.0.1:$FN1,http://127.0.0.1:$FN2 >"$OUT/lb-finn.log" 2>&1 &
PIDS+=($!)
for u in $FS1/health $FS2/health $FN1/health $FN2/health $FS_LB/health $FN_LB/health $DX/api/health; do wait_ready "http://127.0.0.1:$u" 90; done
set +e
"${LOA[@]}" gate --test-key "$LOA_DATA_DIR/staging.pem" --community-id test-community-staging-001 --chaos --json --retries 3 \
  --freeside-url http://127.0.0.1:$FS_LB --dixie-url http://127.0.0.1:$DX >"$OUT/gate-multi.txt" 2>"$OUT/gate-multi.json"
code=$?
set -e
cat "$OUT/gate-multi.txt"
check_run "$OUT/gate-multi.json" "$code" "multi-replica gate"
for p in $FS1 $FS2; do grep -c INVOKE_COMPLETE "$OUT/freeside-$p.log" | sed "s/^/freeside :$p INVOKE_COMPLETE lines: /"; done
"${LOA[@]}" audit | tee "$OUT/audit-multi.txt"
cleanup; PIDS=()
# Passed: its database goes (a failed run keeps it for a post-mortem, under the name printed above).
psql "postgresql://postgres@127.0.0.1:${ARRAKIS_PG_PORT:-55432}/postgres" -qc "DROP DATABASE $DB WITH (FORCE)" >/dev/null
echo "== launch gate: all runs passed"
