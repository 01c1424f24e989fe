#!/usr/bin/env bash
# Runs the loa CLI from this checkout: $LOA if set (e.g. LOA=loa for an installed tool), else the newest built
# loa.dll under artifacts/, else `dotnet run`. Usage: scripts/loa.sh <command> [args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${LOA:-}" ]]; then
  # $LOA runs without LOA in its environment, so a LOA that names this script (or a wrapper that calls it) comes back
  # here once and runs the checkout's loa below, instead of exec-ing itself for ever.
  cmd="$LOA"
  unset LOA
  # shellcheck disable=SC2086
  exec $cmd "$@"
fi
dll="$(ls -t "$ROOT"/artifacts/bin/Arrakis.Cli/release/loa.dll "$ROOT"/artifacts/bin/Arrakis.Cli/debug/loa.dll 2>/dev/null | head -1 || true)"
if [[ -n "$dll" ]]; then
  exec dotnet "$dll" "$@"
fi
exec dotnet run --project "$ROOT/src/Arrakis.Cli" -v q -- "$@"
