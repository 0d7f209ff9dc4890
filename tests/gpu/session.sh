#!/usr/bin/env bash
# One lease, everything: the correctness checks (tests/gpu/run.sh's steps) run side by side, since
# they judge numbers, not time; then the benchmark (tests/gpu/bench.sh) runs alone, so nothing
# else shares the GPU while it is timed. Each phase is bounded; logs go to $OUT.
#
#   device run, carry [".whl"]:  bash tests/gpu/session.sh
#
# CHECK_S bounds the parallel phase, BUDGET_S the benchmark (bench.sh skips what does not fit).
# A CPU dry run: DEVICE=cpu SIZE=32 BATCH=2 CHECK_SIZE=32 ITERS=1 WARMUP=1 BUDGET_S=60 \
#   STEPS=torch-fp32-tf32 bash tests/gpu/session.sh
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
# The float64 reference runs in numpy on the CPU; several checks at once share the cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-4}
DEVICE=${DEVICE:-gpu}
CHECK_S=${CHECK_S:-200}
CHECK_SIZE=${CHECK_SIZE:-224}
CHECK_BATCH=${CHECK_BATCH:-16}
BACKENDS=${BACKENDS:-jax,torch}
start=$SECONDS

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  python3 -c "import sys, torch, jax, flax; print(sys.version.split()[0], 'torch', torch.__version__, 'jax', jax.__version__, 'flax', flax.__version__)"
  python3 -c "import keras; print('keras', keras.__version__)" 2>&1 | tail -n 1; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

bounded() {  # bounded NAME COMMAND...: in the background, capped at CHECK_S, log in $OUT/NAME.log
  local name=$1; shift
  ( timeout "$CHECK_S" "$@" > "$OUT/$name.log" 2>&1; echo "$name rc=$? after $((SECONDS - start)) s" >> "$OUT/summary.txt" ) &
}

if [ "$DEVICE" = gpu ]; then
  bounded pytest-gpu python3 -m pytest -q -s -m gpu -p no:cacheprovider tests/
  for backend in ${BACKENDS//,/ }; do
    KERAS_BACKEND=$backend bounded "pytest-gpu-keras-$backend" \
      python3 -m pytest -q -s -m "gpu and keras" -p no:cacheprovider tests/
  done
  bounded calibrate python3 tests/gpu/calibrate.py "$OUT/calibrate.npz"
fi
# The GPU half of the mutant table (README): every broken port at every GPU precision.
bounded mutants python3 -m shared.tools.cli check --mutants --device "$DEVICE" --keras-backends "$BACKENDS" \
  --mutant-precisions "$( [ "$DEVICE" = cpu ] && echo fp32,bf16 || echo fp32,tf32,bf16 )" \
  --depths 1,1 --width 8 --size 32 --json "$OUT/mutants.json"
for mode in eval train; do
  for precision in fp32 tf32 bf16; do
    [ "$DEVICE" = cpu ] && [ "$precision" = tf32 ] && continue
    trace=(); [ "$mode" = eval ] && trace=(--trace)
    bounded "check-$mode-$precision" python3 -m shared.tools.cli check --device "$DEVICE" --precision "$precision" \
      --mode "$mode" --keras-backends "$BACKENDS" --size "$CHECK_SIZE" --batch "$CHECK_BATCH" "${trace[@]}" \
      --json "$OUT/check-$mode-$precision.json"
  done
done
wait
echo "== checks done after $((SECONDS - start)) s"
cat "$OUT/summary.txt"
for f in "$OUT"/check-*.log; do echo "== $f"; tail -n 25 "$f"; done
for f in "$OUT"/pytest-*.log; do echo "== $f"; grep -E "rel |passed|failed|error|Error" "$f" | tail -n 30; done

# Headline figures first: bench.sh skips what no longer fits in BUDGET_S.
STEPS=${STEPS:-torch-bf16 flax-keras-jax-bf16 torch-compile-infer torch-fp32-tf32 torch-compile-train flax-keras-jax-fp32-tf32 keras-torch} \
  BUDGET_S=${BUDGET_S:-190} OUT=$OUT DEVICE=$DEVICE bash tests/gpu/bench.sh
echo "== all done after $((SECONDS - start)) s"
cat "$OUT/bench.md" 2>/dev/null
# At most 8 files come back: pack the logs and JSON into one archive beside the summaries.
(cd "$OUT" && tar czf logs.tgz --remove-files ./*.log ./*.json ./bench-*.md 2>/dev/null; ls)
