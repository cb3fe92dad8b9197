#!/usr/bin/env bash
# Stage what scripts/gpu_check.sh needs on a lent GPU machine that has no network (run HERE, with PyPI):
#   .gpu/whl/          wheels of our dependencies that the machine's image lacks, at this venv's versions
#                      (the image holds torch, lightning, transformers, torchmetrics, ...: /work/.library/device)
#   .gpu/fashion-mnist the Fashion-MNIST source files (Debian's dataset-fashion-mnist layout)
#   .gpu/assets        LPIPS-AlexNet weights (phase 1's perceptual loss on Fashion-MNIST)
# Then, on the machine (one call, `carry` [".gpu"]):  bash scripts/gpu_check.sh
# .gpu/ is git-ignored; what travels (the working tree plus .gpu) must stay under 64 MiB.
#
#     bash scripts/gpu_prepare.sh            (PY=... for another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STAGE=.gpu
# Missing from the GPU image; open_clip_torch only for CLIP's BPE merges file (installed --no-deps, never imported).
PACKAGES=(hydra-core omegaconf antlr4-python3-runtime webdataset braceexpand lpips diffusers importlib_metadata
          open_clip_torch)
MAX_MIB=60  # of the 64 MiB a device call carries, a margin for files added later

rm -rf "$STAGE"
mkdir -p "$STAGE/whl" "$STAGE/fashion-mnist" "$STAGE/assets/lpips"
for name in "${PACKAGES[@]}"; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  # The machine runs CPython 3.12 on x86-64 manylinux; sdist-only packages (antlr4) are built into wheels here.
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$STAGE/whl" "$name==$version" 2>/dev/null \
    || "$PY" -m pip wheel -q --no-deps -w "$STAGE/whl" "$name==$version"
done
cp /usr/share/datasets/fashion-mnist/*.gz "$STAGE/fashion-mnist/"
"$PY" - "$STAGE/assets" <<'EOF'
import shutil, sys
from pathlib import Path
from ldm_train.assets import lpips_weights_path
source = lpips_weights_path("alex")  # written by `make install` (scripts/prepare_assets.py)
if not source.is_file():
    sys.exit(f"{source} is missing: run `python scripts/prepare_assets.py` first")
target = Path(sys.argv[1]) / source.relative_to(source.parents[1])
shutil.copyfile(source, target)
EOF
ls "$STAGE/whl"
staged=$(du -sm "$STAGE" | cut -f1)
# What travels besides .gpu: tracked files and untracked ones git does not ignore.
tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1) || true
total=$((staged + tree / 1048576))
echo "staged $staged MiB in $STAGE; with the working tree about $total MiB (a device call carries 64 MiB at most)"
[ "$total" -le "$MAX_MIB" ] || { echo "over $MAX_MIB MiB (a margin under 64): leave something out" >&2; exit 1; }
