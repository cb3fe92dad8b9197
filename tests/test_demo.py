"""`make demo` shortened: scripts/demo.py trains both phases for a few steps, evaluates them and writes the
report (report.md, report.json, grid.png, curves.png) with every number it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import REPO

pytestmark = pytest.mark.slow
STEPS = 16
COMMON = [f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={STEPS // 2}", "trainer.limit_val_batches=1",
          "data.batch_size=8", "data.num_workers=0", "data.max_train_samples=256", "data.max_val_samples=16",
          f"callbacks.images.every_n_steps={STEPS}", "evaluation.every_n_steps=null"]  # evaluated once, at the end
PHASE1 = [*COMMON, "module.loss.disc_start=8", "evaluation.evaluator.reference.n=16", "module.latent_scale_batches=2"]
PHASE2 = [*COMMON, "evaluation.evaluator.per_prompt=1", "evaluation.evaluator.reference.n=10", "module.sampler.num_steps=2"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "LDM_TRAIN_ROOT": str(root), "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--out", str(root / "outputs" / "demo"), "--n", "20",
         "--reference-n", "20", "--phase1", *PHASE1, "--phase2", *PHASE2],
        cwd=root, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Report: {root / 'outputs' / 'demo' / 'report.md'}" in result.stderr  # where to look, said last
    return root / "outputs" / "demo"


def test_demo_writes_the_report_files(demo: Path):
    for name in ("report.md", "report.json", "grid.png", "curves.png"):
        assert (demo / name).is_file(), name
    grid = Image.open(demo / "grid.png")
    assert grid.height > grid.width  # one row per class prompt: 10 rows of 2 samples
    assert Image.open(demo / "curves.png").width > 1000


def test_demo_report_holds_every_promised_number(demo: Path):
    report = json.loads((demo / "report.json").read_text())
    phase1, phase2 = report["phases"]["phase 1"], report["phases"]["phase 2"]
    assert phase1["steps"] == phase2["steps"] == STEPS
    for phase in (phase1, phase2):
        assert phase["wall_clock_s"] > 0 and phase["images_per_s"] > 0 and phase["peak_rss_mib"] > 100
        assert phase["command"].startswith("python train.py") and phase["evaluation_command"].startswith(
            "python scripts/evaluate.py")
    assert "sampler=" not in phase1["evaluation_command"] and "sampler=dpmpp_2m" in phase2["evaluation_command"]
    assert set(phase1["evaluation"]["metrics"]) == {"psnr", "ssim", "lpips_vgg", "rfid@20"}
    metrics = phase2["evaluation"]["metrics"]
    assert {"fid@20", "kid@20", "class_accuracy"} <= set(metrics) and 0 <= metrics["class_accuracy"] <= 1
    assert phase2["evaluation"]["reference"] == "fashion_mnist test[:20] @32px"
    assert phase2["evaluation"]["sampler"] == "dpmpp_2m" and phase2["evaluation"]["steps"] == 25
    text = (demo / "report.md").read_text()
    for needle in ("fid@20", "class_accuracy", "Sneaker", "psnr", "images/s", "peak memory", "python train.py",
                   "python scripts/evaluate.py", "fashion_mnist test[:20] @32px"):
        assert needle in text, needle
