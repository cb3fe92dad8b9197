#!/usr/bin/env bash
# The GPU check of issue 11 (≤ 8 minutes on one GPU): the GPU-only tests (bf16, channels-last, compile); both
# phases 200 steps in bf16 with compile and channels-last on the Fashion-MNIST configs; one phase-2
# step with trainer=fsdp on one device; bench.py --size sd at 256²; then a summary.
#
#     bash scripts/gpu_check.sh [OUT_DIR]          (default outputs/gpu_check)
#
# Each part runs under its own time limit (45 + 75 + 75 + 45 + 240 s = 8 min at most); the summary says which
# passed and the exit status is the number that failed. bench.py --compile is left out (compiling the SD UNet
# alone takes minutes; compile is checked by the GPU tests and both phases).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-outputs/gpu_check}
STEPS=${STEPS:-200}
mkdir -p "$OUT"
declare -A STATUS
SECONDS=0

part() {  # part NAME TIMEOUT_S COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  STATUS[$name]="rc=$rc $((SECONDS - start))s"
  echo "[$name] rc=$rc in $((SECONDS - start)) s (log: $OUT/$name.log)"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

part tests 45 "$PY" -m pytest -q -m gpu tests/test_speed_switches.py

COMMON=(experiment=fashion_mnist trainer=gpu evaluation=none logger=csv "trainer.max_steps=$STEPS"
        "trainer.val_check_interval=$STEPS" module.compile=true module.channels_last=true)
# The discriminator from half-way, so the compiled autoencoder also runs the adaptive GAN weight.
part phase1 75 "$PY" train.py stage=autoencoder "${COMMON[@]}" "module.loss.disc_start=$((STEPS / 2))" \
  "hydra.run.dir=$OUT/phase1"
part phase2 75 "$PY" train.py stage=ldm text_encoder=minilm "${COMMON[@]}" "first_stage.ckpt=$OUT/phase1" \
  "hydra.run.dir=$OUT/phase2"
part fsdp 45 "$PY" train.py stage=ldm text_encoder=minilm experiment=fashion_mnist trainer=fsdp trainer.devices=1 \
  evaluation=none logger=csv trainer.max_steps=1 "first_stage.ckpt=$OUT/phase1" "hydra.run.dir=$OUT/fsdp"
part bench 240 "$PY" scripts/bench.py --size sd --resolutions 256 --reps 3 --iters 2 \
  --output "$OUT/bench.json"

echo
echo "== summary ($SECONDS s) =="
for name in tests phase1 phase2 fsdp bench; do
  echo "$name: ${STATUS[$name]:-not run}"
done
for run in phase1 phase2; do  # the last logged training losses of each phase
  csv=$(ls "$OUT/$run"/csv/metrics.csv 2>/dev/null | head -1)
  [ -n "$csv" ] && echo "$run last metrics row: $(tail -n 1 "$csv")"
done
tail -n 2 "$OUT/tests.log"
sed -n '/^name /,$p' "$OUT/bench.log"
failed=0
for name in tests phase1 phase2 fsdp bench; do
  [[ ${STATUS[$name]:-rc=1} == rc=0* ]] || failed=$((failed + 1))
done
exit "$failed"
