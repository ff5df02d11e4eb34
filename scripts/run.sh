#!/usr/bin/env bash
# Set up (once) and run the main job. Arguments go to `python -m conformance`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-venv.sh
if [ $# -eq 0 ]; then set -- selfcheck; fi
exec .venv/bin/python -m conformance "$@"
