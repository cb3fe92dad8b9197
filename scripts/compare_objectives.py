"""Compare phase-2 objectives on Fashion-MNIST at equal cost, then EMA lengths and guidance for the best.

    python scripts/compare_objectives.py --first-stage <phase-1 run dir>     # about an hour on 2 CPU cores
    python scripts/compare_objectives.py --first-stage <dir> --steps 50 --n 100 --reference-n 1000   # a smoke run

1. Trains the `experiment=fashion_mnist` phase-2 recipe once per objective (`diffusion=eps`, `v_min_snr`,
   `flow`), everything else equal: same VAE, UNet, data order, seed and number of steps. The objectives
   cost the same per step (one UNet forward and backward), so equal steps is equal wall-clock; each
   run's images/s is reported to show it. Post-hoc EMA snapshots are kept every `--snapshot-every` steps.
2. Scores each run's EMA weights with `scripts/evaluate.py` (n samples, n/10 per class prompt,
   DPM-Solver++(2M) 25 steps, guidance 3; FID/KID against the first `--reference-n` test images,
   Inception 2015-12-05; class accuracy).
3. For the objective with the lowest FID: post-hoc EMA (EDM2) at `--sigma-rels`, and guidance limited
   to `--interval` (Kynkäänniemi et al. 2024), each scored the same way.
Writes `<out>/results.json` and `<out>/report.md`. Finished runs and evaluations are reused, so a killed
comparison continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from any folder

from ldm_train.evaluate_cli import EvaluateArgs, evaluate  # noqa: E402
from ldm_train.posthoc_ema_cli import PostHocArgs, write_checkpoints  # noqa: E402
from ldm_train.runs import is_finished  # noqa: E402

log = logging.getLogger("compare_objectives")
OBJECTIVES = ("eps", "v_min_snr", "flow")  # configs/diffusion/<name>.yaml; v_min_snr is the recipe before this
SHOWN = ("class_accuracy", "fid@", "kid@")  # metric keys (prefixes) in the table


def train(run_dir: Path, objective: str, first_stage: str, steps: int | None, snapshot_every: int) -> dict:
    """One phase-2 run of the recipe with `objective`; returns its run_summary.json."""
    if not is_finished(run_dir):
        overrides = [
            "stage=ldm", "experiment=fashion_mnist", "text_encoder=minilm", f"diffusion={objective}",
            f"first_stage.ckpt={first_stage}", f"hydra.run.dir={run_dir}", "resume=auto", "evaluation=none",
            f"callbacks.posthoc_ema.every_n_steps={snapshot_every}",
        ]
        if steps is not None:
            overrides += [f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
                          f"callbacks.images.every_n_steps={steps}"]
        log.info("training %s: python train.py %s", objective, " ".join(overrides))
        subprocess.run([sys.executable, str(REPO / "train.py"), *overrides], cwd=REPO, check=True)
    return json.loads((run_dir / "run_summary.json").read_text())


def score(ckpt: Path, out_dir: Path, args: argparse.Namespace, **settings) -> dict:
    """evaluate.py's metrics of one checkpoint (reused when `out_dir` already holds them)."""
    result_file = out_dir / "evaluation.json"
    if not result_file.exists():
        evaluate(EvaluateArgs(ckpt=str(ckpt), n=args.n, reference_n=args.reference_n, out_dir=str(out_dir),
                              save_samples=False, **settings))
    metrics = json.loads(result_file.read_text())["metrics"]
    return {k: v for k, v in metrics.items() if k.startswith(SHOWN) and "/" not in k}


def table(rows: list[dict]) -> str:
    keys = [k for k in rows[0]["metrics"]]
    lines = ["| variant | " + " | ".join(keys) + " | images/s |", "|---" * (len(keys) + 2) + "|"]
    for row in rows:
        cells = [f"{row['metrics'][k]:.4g}" for k in keys]
        speed = f"{row['images_per_s']:.1f}" if row.get("images_per_s") else ""
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {speed} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first-stage", required=True, help="a finished phase-1 run directory (or its export)")
    parser.add_argument("--out", default=str(REPO / "outputs" / "compare_objectives"))
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's trainer.max_steps")
    parser.add_argument("--n", type=int, default=1000, help="samples per evaluation, n/10 per class")
    parser.add_argument("--reference-n", type=int, default=10_000, help="first N test images as the reference")
    parser.add_argument("--snapshot-every", type=int, default=100, help="post-hoc EMA snapshot interval (steps)")
    parser.add_argument("--sigma-rels", default="0.05,0.1,0.2", help="post-hoc EMA lengths for the best run")
    parser.add_argument("--interval", default="0.3,5.4", help="[σ_lo, σ_hi] of guidance interval for the best run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[compare] %(message)s")
    out = Path(args.out).resolve()
    first_stage = str(Path(args.first_stage).resolve())

    rows = []
    for objective in OBJECTIVES:
        run_dir = out / objective
        summary = train(run_dir, objective, first_stage, args.steps, args.snapshot_every)
        metrics = score(run_dir, out / "eval" / objective, args)
        rows.append({"name": objective, "run": str(run_dir), "steps": summary["step"],
                     "images_per_s": summary["images_per_s"], "metrics": metrics})
        log.info("%s: %s", objective, metrics)
    fid_key = next(k for k in rows[0]["metrics"] if k.startswith("fid@"))
    best = min(rows, key=lambda row: row["metrics"][fid_key])
    best_dir = Path(best["run"])

    variants = []
    for sigma_rel, ckpt in write_checkpoints(PostHocArgs(run=str(best_dir), sigma_rel=args.sigma_rels)):
        name = f"{best['name']} post-hoc EMA σ_rel={sigma_rel:g}"
        variants.append({"name": name, "metrics": score(ckpt, out / "eval" / f"{best['name']}_ema{sigma_rel:g}", args)})
    interval = [float(v) for v in args.interval.split(",")]
    name = f"{best['name']} guidance interval σ∈[{interval[0]:g}, {interval[1]:g}]"
    variants.append({"name": name, "metrics": score(best_dir, out / "eval" / f"{best['name']}_interval", args,
                                                     guidance_interval=interval)})

    results = {"fid_key": fid_key, "best": best["name"], "objectives": rows, "variants": variants,
               "n": args.n, "reference_n": args.reference_n, "first_stage": first_stage,
               "command": "python scripts/compare_objectives.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = [
        "# Phase-2 objectives on Fashion-MNIST at equal steps", "",
        f"`{results['command']}`; {args.n} samples (n/10 per class), DPM-Solver++(2M) 25 steps, guidance 3, "
        f"FID/KID against the first {args.reference_n} test images; EMA weights.", "",
        table(rows), "", f"Best by {fid_key}: **{best['name']}**. Variants of it:", "", table(variants), "",
    ]
    (out / "report.md").write_text("\n".join(report))
    log.info("report: %s\n%s\n\n%s", out / "report.md", table(rows), table(variants))
    return results


if __name__ == "__main__":
    main()
