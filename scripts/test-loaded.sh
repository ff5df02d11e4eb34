#!/usr/bin/env bash
# The CI suite next to a CPU-burning load: BURNERS busy processes (default 4, on this 2-core
# machine a load of ~6 with the suite's own ranks). Prints how long the suite took unloaded
# and loaded; fails if the loaded run fails (a slow machine must never produce a false hang
# or a lost torchrun world). Extra arguments go to scripts/test.sh (and so to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
BURNERS="${BURNERS:-4}"
start=$(date +%s)
bash scripts/test.sh "$@"
quiet=$(( $(date +%s) - start ))
pids=()
for _ in $(seq "$BURNERS"); do
  ( while :; do :; done ) &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
start=$(date +%s)
bash scripts/test.sh "$@"
loaded=$(( $(date +%s) - start ))
kill "${pids[@]}" 2>/dev/null || true
echo "CI suite: ${quiet}s unloaded, ${loaded}s next to ${BURNERS} CPU burners ($(nproc) cores)"
