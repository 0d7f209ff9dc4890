#!/usr/bin/env bash
# The bounded GPU benchmark for the lent H100: ResNet-50, batch 256 x 224 px, infer and train,
# fp32 (TF32 off) / tf32 / bf16, ours beside torchvision, keras.applications (jax and torch
# backends) and, for resnet_flax, keras.applications on jax; a torch.compile variant. The GPU
# image has no TensorFlow. JSON, markdown and logs go to $OUT (default ./gpu-out).
#
#   ../shared/device/prepare-wheels.sh          # here, once: Keras wheels into .whl/
#   device run, carry [".whl"]:  bash tests/gpu/bench.sh
#
# Steps run in priority order; each is capped with `timeout`, and once BUDGET_S seconds have gone
# the rest are skipped (and listed), so a short lease still brings back the headline numbers.
# STEPS="torch-bf16 flax-keras-jax-bf16" runs only those. On a CPU, for a dry run of this script:
#   DEVICE=cpu BATCH=2 SIZE=32 ITERS=1 WARMUP=1 STEPS="torch-fp32-tf32" bash tests/gpu/bench.sh
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
DEVICE=${DEVICE:-gpu}
BATCH=${BATCH:-256}
SIZE=${SIZE:-224}
ITERS=${ITERS:-10}
WARMUP=${WARMUP:-3}
BUDGET_S=${BUDGET_S:-480}
STEP_S=${STEP_S:-300}
ALL_STEPS="torch-bf16 flax-keras-jax-bf16 torch-fp32-tf32 flax-keras-jax-fp32-tf32 torch-compile-infer keras-torch torch-compile-train"
STEPS=${STEPS:-$ALL_STEPS}

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, torch, jax, flax; print(sys.version.split()[0], 'torch', torch.__version__, 'jax', jax.__version__, 'flax', flax.__version__)"
  python3 -c "import keras; print('keras', keras.__version__)" 2>&1 | tail -n 1; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

common=(--arch resnet50 --device "$DEVICE" --batch "$BATCH" --size "$SIZE" --iters "$ITERS" --warmup "$WARMUP")
args_for() {  # the bench options of one step
  case $1 in
    torch-bf16) echo --frameworks torch --precision bf16 --channels-last ;;
    flax-keras-jax-bf16) echo --frameworks keras,flax --keras-backends jax --precision bf16 ;;
    torch-fp32-tf32) echo --frameworks torch --precision fp32,tf32 ;;
    flax-keras-jax-fp32-tf32) echo --frameworks keras,flax --keras-backends jax --precision fp32,tf32 ;;
    torch-compile-infer) echo --frameworks torch --precision bf16 --channels-last --compile --mode infer ;;
    keras-torch) echo --frameworks keras --keras-backends torch --precision fp32,tf32,bf16 ;;
    torch-compile-train) echo --frameworks torch --precision bf16 --channels-last --compile --mode train ;;
    *) return 1 ;;
  esac
}

start=$SECONDS
status=0
for name in $STEPS; do
  if ! opts=$(args_for "$name"); then
    echo "== $name: unknown step (known: $ALL_STEPS)" | tee -a "$OUT/summary.txt"; status=1; continue
  fi
  left=$((BUDGET_S - (SECONDS - start)))
  if [ "$left" -lt 60 ]; then
    echo "== $name: skipped, budget of ${BUDGET_S}s spent" | tee -a "$OUT/summary.txt"; continue
  fi
  limit=$((left < STEP_S ? left : STEP_S))
  echo "== $name ($limit s max): resnet-parity bench ${common[*]} $opts" | tee -a "$OUT/summary.txt"
  # shellcheck disable=SC2086  # $opts is a list of words on purpose
  timeout "$limit" python3 -m shared.tools.cli bench "${common[@]}" $opts --timeout "$limit" \
    --json "$OUT/bench-$name.json" --markdown "$OUT/bench-$name.md" > "$OUT/bench-$name.log" 2>&1
  rc=$?
  echo "   rc=$rc after $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
  [ $rc -eq 0 ] || status=1
done
cat "$OUT"/bench-*.md > "$OUT/bench.md" 2>/dev/null
exit $status
