#!/usr/bin/env bash
# Set up (once) and run the main job: the conformance suite against the installed torch,
# with torch's known divergences, ending with a table per utility. Arguments go to
# `python -m conformance` (default: `run --jobs 2`; try `run --target impl`, `list`, `fuzz`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-venv.sh
if [ $# -eq 0 ]; then set -- run --jobs 2; fi
exec .venv/bin/python -m conformance "$@"
