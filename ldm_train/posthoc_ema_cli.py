"""`python scripts/posthoc_ema.py run=<phase-2 run dir> sigma_rel=0.06,0.08,0.12 [step=N] [evaluate=true n=1000]`

Reconstructs EMA weights of the given relative lengths (EDM2's post-hoc EMA, ldm_train/lit/posthoc_ema.py) from
the snapshots a run saved with `callbacks.posthoc_ema.every_n_steps=N`, at the last snapshot's step (or `step`),
and writes one checkpoint per length, `<run>/checkpoints/posthoc-ema-<σ_rel>-step<step>.ckpt`: the run's
`last.ckpt` (or `ckpt`) with its EMA weights (its UNet weights if it kept no EMA) replaced. Sampling, evaluation
and export take them like any other checkpoint. With `evaluate=true` each is scored by scripts/evaluate.py
(`n`, `sampler`, `steps`, `guidance` as there) and a table of the metrics per σ_rel is printed.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ldm_train.files import atomic_write
from ldm_train.lit.posthoc_ema import reconstruct
from ldm_train.runs import CHECKPOINTS_DIR, find_checkpoint

log = logging.getLogger(__name__)
SNAPSHOT_DIR = "posthoc_ema"  # the stage config's callbacks.posthoc_ema.dirpath, relative to the run
WEIGHT_PREFIXES = ("ema.shadow.", "unet.")  # what TextToImage.from_checkpoint reads, in its order


@dataclass
class PostHocArgs:
    run: str = "???"  # the phase-2 run directory
    sigma_rel: str = "0.05,0.1"  # the lengths to reconstruct, comma-separated
    step: int | None = None  # the training step to reconstruct at; None: the last snapshot's
    snapshots: str | None = None  # default <run>/posthoc_ema
    ckpt: str | None = None  # the checkpoint whose weights are replaced; default the run's last.ckpt
    out_dir: str | None = None  # default <run>/checkpoints
    evaluate: bool = False  # score each checkpoint with scripts/evaluate.py
    n: int = 1000
    sampler: str = "dpmpp_2m"
    steps: int = 25
    guidance: float = 3.0


def parse_args(argv: list[str]) -> PostHocArgs:
    """key=value arguments checked against PostHocArgs: a misspelt key or a wrong type fails here."""
    schema = OmegaConf.structured(PostHocArgs)
    return OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.from_dotlist(argv)))


def sigma_rels_of(text: str) -> list[float]:
    values = [float(v) for v in str(text).strip("[]() ").replace(" ", "").split(",") if v]
    if not values:
        raise SystemExit("posthoc_ema.py: give sigma_rel=<σ>[,<σ>...], e.g. sigma_rel=0.06,0.08,0.12")
    return values


def write_checkpoints(args: PostHocArgs) -> list[tuple[float, Path]]:
    """Reconstruct and write one checkpoint per σ_rel; returns (σ_rel, path) pairs."""
    run = Path(args.run)
    sigma_rels = sigma_rels_of(args.sigma_rel)
    step, states = reconstruct(args.snapshots or run / SNAPSHOT_DIR, sigma_rels, args.step)
    base_path = find_checkpoint(args.ckpt or run, stage="ldm")
    out_dir = Path(args.out_dir) if args.out_dir else run / CHECKPOINTS_DIR
    written = []
    for sigma_rel, weights in zip(sigma_rels, states):
        checkpoint = torch.load(base_path, map_location="cpu", weights_only=True)
        state = checkpoint["state_dict"]
        prefix = next((p for p in WEIGHT_PREFIXES if any(k.startswith(p) for k in state)), None)
        names = {k[len(prefix):] for k in state if k.startswith(prefix)} if prefix else set()
        if names != set(weights):
            raise ValueError(
                f"{base_path} and the snapshots hold different networks ({len(names)} vs {len(weights)} tensors); "
                "pass the run's own checkpoint as ckpt="
            )
        state.update({prefix + name: value for name, value in weights.items()})
        checkpoint["posthoc_ema"] = {"sigma_rel": sigma_rel, "step": step, "from": str(base_path)}
        path = out_dir / f"posthoc-ema-{sigma_rel:.3f}-step{step}.ckpt"
        atomic_write(path, lambda tmp, checkpoint=checkpoint: torch.save(checkpoint, tmp))
        log.info("σ_rel %.3f at step %d -> %s", sigma_rel, step, path)
        written.append((sigma_rel, path))
    return written


def main(argv: list[str] | None = None) -> list[tuple[float, Path]]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    written = write_checkpoints(args)
    if args.evaluate:
        from ldm_train import evaluate_cli

        rows = []
        for sigma_rel, path in written:
            out = evaluate_cli.main([f"ckpt={path}", f"n={args.n}", f"sampler={args.sampler}",
                                     f"steps={args.steps}", f"guidance={args.guidance}"])
            metrics = json.loads((out / "evaluation.json").read_text()).get("metrics", {})
            rows.append((sigma_rel, {k: v for k, v in metrics.items() if "/" not in k}))
        for sigma_rel, metrics in rows:
            sys.stdout.write(f"sigma_rel {sigma_rel:.3f}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) + "\n")
    return written
