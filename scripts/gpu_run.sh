#!/usr/bin/env bash
# The prepared GPU run (device machine, or any CUDA box with this checkout): install the carried wheels if given,
# record the machine, and run dqar_lib.evaluation.run_gpu into $OUT (one JSON per model and mode, and a log).
#   OUT=/tmp/gpu DQAR_COMMIT=$(git rev-parse HEAD) bash scripts/gpu_run.sh [run_gpu args ...]
# Rehearse on a CPU with: OUT=/tmp/gpu bash scripts/gpu_run.sh --models tiny --batch 2 --steps 50 --repeats 1 --device cpu
set -uo pipefail
: "${OUT:?set OUT to the folder the results go to}"
PY=${PY:-python3}
if [ -d /tmp/site/diffusers ]; then
  export PYTHONPATH=/tmp/site:$PWD
elif ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
fi
export PYTHONUNBUFFERED=1 DQAR_COMMIT=${DQAR_COMMIT:-unknown}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>/dev/null || true
  $PY -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)"
} 2>&1 | tee -a "$OUT/machine.txt"
$PY -m dqar_lib.evaluation.run_gpu --out "$OUT" "$@" 2>&1 | tee -a "$OUT/log.txt"
