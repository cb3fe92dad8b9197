"""`make demo`: phase 1, phase 2, evaluation of both, and a report — the whole product in one command.

    python scripts/demo.py                       # experiment=demo, report in outputs/demo/
    python scripts/demo.py --phase1 trainer.max_steps=50 --phase2 trainer.max_steps=50 --n 100   # shorter

Each phase runs `python train.py ... experiment=<experiment>` in its own process (progress bars on the
terminal), into `outputs/demo/<time>/{autoencoder,ldm}`; phase 2 trains on phase 1's export. Both are
then scored by `scripts/evaluate.py` (phase 1: PSNR/SSIM/LPIPS/rFID on the first n test images;
phase 2: n samples, n/10 per class prompt, DPM-Solver++ 25 steps, guidance 3, FID/KID against the
first `--reference-n` test images, class accuracy), and `outputs/demo/report.md` (+ report.json,
grid.png, curves.png) gathers the numbers with the commands that reproduce them. The phases are
bounded by steps, never by time: a slower machine gives the same model, later.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from any folder

from ldm_train.evaluate_cli import EvaluateArgs, evaluate  # noqa: E402
from ldm_train.report import PhaseRecord, build_report  # noqa: E402
from ldm_train.resume import git_sha  # noqa: E402

log = logging.getLogger("demo")


def train(stage: str, run_dir: Path, experiment: str, extra: list[str]) -> str:
    """Train one phase into `run_dir`; returns the command (as a user would type it)."""
    args = [f"stage={stage}", f"experiment={experiment}", f"hydra.run.dir={run_dir}", "resume=never", *extra]
    command = [sys.executable, str(REPO / "train.py"), *args]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    summary = json.loads((run_dir / "run_summary.json").read_text())
    log.info("%s: %d steps in %.1f min, %.1f images/s, peak RSS %.0f MiB → %s", stage, summary["step"],
             (time.perf_counter() - start) / 60, summary["images_per_s"], summary["peak_rss_mib"], run_dir)
    return "python train.py " + " ".join(shlex.quote(a) for a in args)


def score(args: EvaluateArgs) -> tuple[Path, str]:
    result, out = evaluate(args)
    shown = {k: round(v, 4) for k, v in result.metrics.items() if "/" not in k}
    log.info("evaluation of %s: %s", args.ckpt, shown)
    sampling = ["reference_n", "sampler", "steps", "guidance", "seed"] if result.details["stage"] == "ldm" else []
    fields = ["ckpt", "n", *sampling, "out_dir"]
    command = "python scripts/evaluate.py " + " ".join(f"{f}={shlex.quote(str(getattr(args, f)))}" for f in fields)
    return out, command


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--out", default=str(REPO / "outputs" / "demo"))
    parser.add_argument("--n", type=int, default=1000, help="samples (phase 2) and held-out images (phase 1)")
    parser.add_argument("--reference-n", type=int, default=2000, help="first N test images as the FID reference")
    parser.add_argument("--phase1", nargs="*", default=[], help="extra overrides for phase 1")
    parser.add_argument("--phase2", nargs="*", default=[], help="extra overrides for phase 2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo] %(message)s")
    start = time.perf_counter()
    out = Path(args.out).resolve()
    runs = out / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    phase1_dir, phase2_dir = runs / "autoencoder", runs / "ldm"

    phase1_cmd = train("autoencoder", phase1_dir, args.experiment, args.phase1)
    phase2_cmd = train("ldm", phase2_dir, args.experiment,
                       ["text_encoder=minilm", f"first_stage.ckpt={phase1_dir}", *args.phase2])
    eval1_dir, eval1_cmd = score(EvaluateArgs(ckpt=str(phase1_dir), n=args.n, out_dir=str(runs / "eval_autoencoder")))
    eval2_dir, eval2_cmd = score(EvaluateArgs(ckpt=str(phase2_dir), n=args.n, reference_n=args.reference_n,
                                              sampler="dpmpp_2m", steps=25, guidance=3.0,
                                              out_dir=str(runs / "eval_ldm")))
    phases = [PhaseRecord("phase 1", phase1_dir, phase1_cmd, eval1_dir, eval1_cmd),
              PhaseRecord("phase 2", phase2_dir, phase2_cmd, eval2_dir, eval2_cmd)]
    header = {
        "title": f"ldm-train demo ({args.experiment}, Fashion-MNIST 32×32)",
        "date": datetime.now().isoformat(timespec="seconds"),
        "git": git_sha(),
        "machine": f"{torch.get_num_threads()} CPU threads"
                   + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"),
        "whole demo": f"{(time.perf_counter() - start) / 60:.1f} min (training, in-loop and final evaluation)",
    }
    build_report(phases, runs, header)
    for name in ("report.md", "report.json", "grid.png", "curves.png"):  # the newest report at a fixed place
        shutil.copyfile(runs / name, out / name)
    log.info("Report: %s (grid.png, curves.png, report.json beside it; runs in %s)", out / "report.md", runs)
    return out


if __name__ == "__main__":
    main()
