#!/usr/bin/env bash
# Set up (once) and run the harness's own test suite. Used by README and .ci/run.
# TORCH_SPEC picks the torch build; the default is the CPU wheel this kind of machine keeps
# on local disk. Elsewhere, install a CPU or CUDA build first (see README) and pass
# TORCH_SPEC=torch to keep it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-venv.sh
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
