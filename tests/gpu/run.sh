#!/usr/bin/env bash
# The GPU checks for the lent H100, bounded in time: every gpu-marked test (torch, flax, Keras on
# its jax and torch backends; the GPU image has no TensorFlow), then `resnet-parity check
# --device gpu` at every precision, eval and train. Logs and JSON go to $OUT (default ./gpu-out).
#
#   ../shared/device/prepare-wheels.sh            # here, once: Keras wheels into .whl/
#   device run, carry [".whl"]:  bash tests/gpu/run.sh
#
# Each step is capped with `timeout`; a failed step is recorded and the next one still runs.
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
STEP_S=${STEP_S:-120}
status=0
step() {  # step NAME COMMAND...: run bounded, log to $OUT/NAME.log, remember failures
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  timeout "$STEP_S" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc ($(tail -n 1 "$OUT/$name.log"))" | tee -a "$OUT/summary.txt"
  [ $rc -eq 0 ] || status=1
}

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, torch, jax, flax; print(sys.version.split()[0], 'torch', torch.__version__, 'jax', jax.__version__, 'flax', flax.__version__)"
  python3 -c "import keras; print('keras', keras.__version__)" 2>&1 | tail -n 1; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

step pytest-gpu python3 -m pytest -q -m gpu -p no:cacheprovider tests/
for backend in jax torch; do
  KERAS_BACKEND=$backend step "pytest-gpu-keras-$backend" python3 -m pytest -q -m "gpu and keras" -p no:cacheprovider tests/
done
for precision in fp32 tf32 bf16; do
  step "check-$precision" python3 -m shared.tools.cli check --device gpu --precision "$precision" \
    --keras-backends jax,torch --size 224 --batch 16 --trace --json "$OUT/check-$precision.json"
done
step check-train python3 -m shared.tools.cli check --device gpu --mode train --keras-backends jax,torch \
  --size 224 --batch 16 --json "$OUT/check-train.json"
exit $status
