#!/usr/bin/env bash
# Set up (once) and run the tests: the harness's own tests and the property suite against
# impl (which must conform fully), then the suite against the installed torch (which must
# conform apart from its recorded known divergences). Used by README and .ci/run.
# TORCH_SPEC picks the torch build; the default is the CPU wheel this kind of machine keeps
# on local disk. Elsewhere, install a CPU or CUDA build first (see README) and pass
# TORCH_SPEC=torch to keep it. Extra arguments go to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-venv.sh
export SDC_PROFILE="${SDC_PROFILE:-ci}"
export SDC_WORLD_SIZES="${SDC_WORLD_SIZES:-2,4}"
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" tests conformance/suite --sdc-target impl "$@"
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" conformance/suite --sdc-target torch "$@"
