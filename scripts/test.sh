#!/usr/bin/env bash
# The whole test suite: starts PostgreSQL and Redis on loopback, then runs every test project against SQLite and
# PostgreSQL. Exits non-zero on any failure.
# Usage: scripts/test.sh   (ARRAKIS_SKIP_GATE=1 skips the launch-gate runs at the end; README.md, Tests)
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;; esac
cd "$(dirname "$0")/.."
eval "$(scripts/test-services.sh)"
export ARRAKIS_REQUIRE_PG=1
# Node tooling used by tests (the x402 chain tools, the Terraform parser): every committed lockfile.
while IFS= read -r lock; do
  (cd "$(dirname "$lock")" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
done < <(find . -name package-lock.json -not -path "*/node_modules/*" -not -path "./artifacts/*")
dotnet build Arrakis.slnx -c Release -nologo -v q
mkdir -p artifacts/test-results
status=0
# Each test assembly drops the PostgreSQL schemas it created when it ends (CreatedSchemaCleanup); check that it did.
test_schemas() { psql -h 127.0.0.1 -p "${ARRAKIS_PG_PORT:-55432}" -U postgres -d postgres -tAc "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 't\_%'"; }
schemas_before=$(test_schemas)
dotnet test Arrakis.slnx -c Release --no-build --logger "trx" --results-directory artifacts/test-results -- RunConfiguration.TestSessionTimeout=3000000 || status=$?
schemas_left=$(( $(test_schemas) - schemas_before ))
if [ "$schemas_left" -gt 0 ] && [ "${ARRAKIS_KEEP_TEST_SCHEMAS:-0}" != 1 ]; then
  echo "the test suite left $schemas_left PostgreSQL test schemas behind (t_*); every test schema must come from TestStorage" >&2
  status=1
fi
# The launch gate for real: three runs against `loa up`, then the multi-replica run (skip with ARRAKIS_SKIP_GATE=1).
if [ "${ARRAKIS_SKIP_GATE:-0}" != 1 ]; then
  scripts/ci-gate.sh || { echo "launch gate: FAILED" >&2; status=1; }
fi
python3 scripts/summarize-trx.py artifacts/test-results || true
exit $status
