#!/usr/bin/env bash
# The whole test suite: starts PostgreSQL and Redis on loopback, then runs every test project against SQLite and
# PostgreSQL. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/test-services.sh)"
export ARRAKIS_REQUIRE_PG=1
if [ -f package-lock.json ]; then npm ci --no-audit --no-fund >/dev/null; fi
dotnet build Arrakis.slnx -c Release -nologo -v q
mkdir -p artifacts/test-results
status=0
dotnet test Arrakis.slnx -c Release --no-build --logger "trx" --results-directory artifacts/test-results -- RunConfiguration.TestSessionTimeout=3000000 || status=$?
python3 scripts/summarize-trx.py artifacts/test-results || true
exit $status
