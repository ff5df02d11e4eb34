#!/usr/bin/env bash
# The NCCL path on a machine with a GPU (one GPU: NCCL worlds of one rank), the gloo suite
# with CUDA present, and the case benchmark there (BENCH=0 skips it). Writes its logs to $OUT
# (or ./gpu-check-out). Usage: bash scripts/gpu-check.sh
set -u
out=${OUT:-gpu-check-out}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
step() { echo; echo "== $*"; }
{
  step versions
  $py -c "import sys, torch, hypothesis; print(sys.version.split()[0], 'torch', torch.__version__, 'hypothesis', hypothesis.__version__, 'gpus', torch.cuda.device_count())"
  nproc
  step "NCCL tests (oracle on the device, worlds)"
  timeout 100 $py -m pytest -q -p no:cacheprovider tests/test_oracle_device.py tests/test_world.py -k "nccl or device"
  step "impl, NCCL, 1 rank, ci profile"
  timeout 120 $py -m conformance run --target impl --backend nccl --world-sizes 1 --profile ci --max-examples 10 --json "$out/nccl-impl.json"
  echo "exit $?"
  step "torch, NCCL, 1 rank, ci profile"
  timeout 120 $py -m conformance run --target torch --backend nccl --world-sizes 1 --profile ci --max-examples 10 --json "$out/nccl-torch.json"
  echo "exit $?"
  step "impl, gloo, 2 and 4 ranks, ci profile (CUDA present: pinned memory, device moves)"
  timeout 200 $py -m conformance run --target impl --world-sizes 2,4 --profile ci --json "$out/gloo-impl.json"
  echo "exit $?"
  if [ "${BENCH:-1}" != 0 ]; then
    step "bench_cases, gloo, world sizes 2 and 4"
    timeout 200 $py benchmarks/bench_cases.py --sizes 2,4
  fi
} 2>&1 | tee "$out/gpu-check.log"
