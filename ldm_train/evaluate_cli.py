"""`python scripts/evaluate.py ckpt=<run dir | .ckpt | latest> n=1000 sampler=dpmpp_2m steps=25 guidance=3`
(also `ldm-train evaluate ...`).

Scores a finished (or running) run with the evaluators the training callback uses
(`ldm_train.evaluation`), so the two give the same numbers on the same weights and seeds:
- phase 2 (`stage=ldm` runs): n samples, n/10 per Fashion-MNIST class prompt "a photo of a <class>",
  sample i with seed `seed + i`; FID and KID against the first `reference_n` test images (Inception
  2015-12-05; features cached), class accuracy overall and per class;
- phase 1 (`stage=autoencoder` runs, scored through their export): PSNR, SSIM, LPIPS and rFID on the
  first n test images.
Writes `evaluation.json` (metrics, N, reference, sampler settings, seeds, wall-clock, samples/s),
`grid.png` (one row per class prompt; inputs over reconstructions for phase 1) and, for phase 2,
the samples as PNGs with `manifest.jsonl`, into `out_dir` (default `<run>/evaluation/<settings>/`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ldm_train.autoencoder.export import load_first_stage
from ldm_train.evaluation.generation import GenerationEvaluator
from ldm_train.evaluation.reconstruction import ReconstructionEvaluator
from ldm_train.evaluation.reference import RealReference
from ldm_train.evaluation.results import EvaluationResult, count_label
from ldm_train.files import atomic_write
from ldm_train.runs import find_checkpoint, run_of_checkpoint
from ldm_train.speed import default_device
from ldm_train.text_to_image import TextToImage, to_pil

log = logging.getLogger(__name__)
NUM_CLASSES = 10  # the built-in prompt set: one prompt per Fashion-MNIST class


@dataclass
class EvaluateArgs:
    ckpt: str = "latest"  # a run directory, a .ckpt, or `latest` (newest run of `stage` under log_dir)
    stage: str = "ldm"  # which stage `latest` looks for; a run directory or .ckpt says its own
    n: int = 1000  # samples (phase 2: n/10 per class prompt) or held-out images (phase 1)
    sampler: str = "dpmpp_2m"
    steps: int = 25
    guidance: float = 3.0
    guidance_interval: list[float] | None = None  # [σ_lo, σ_hi] (VE σ): guide only there (Kynkäänniemi et al. 2024)
    guidance_rescale: float = 0.0  # φ of Lin et al. (2024)'s guidance rescale
    seed: int = 0  # sample i uses seed + i
    reference_n: int = 10_000  # phase 2: the first reference_n test images are the FID/KID reference
    batch_size: int = 100
    save_samples: bool = True  # phase 2: the PNGs and manifest.jsonl
    out_dir: str | None = None
    device: str = "auto"  # auto: the accelerator when there is one (ldm_train.speed.default_device), else the CPU
    log_dir: str = "outputs"


def parse_args(argv: list[str]) -> EvaluateArgs:
    """key=value arguments checked against EvaluateArgs: a misspelt key or a wrong type fails here."""
    schema = OmegaConf.structured(EvaluateArgs)
    args = OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.from_dotlist(argv)))
    if args.stage not in ("ldm", "autoencoder"):
        raise SystemExit(f"evaluate: stage must be ldm or autoencoder, got {args.stage!r}")
    if args.n < 2:
        raise SystemExit(f"evaluate: n must be >= 2 (FID needs a covariance), got {args.n}")
    return args


def run_record(ckpt_path: Path) -> tuple[str, dict, int]:
    """The stage, resolved config and optimizer step recorded in a checkpoint."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    config = checkpoint["hyper_parameters"]["config"]
    return config["stage_name"], config, checkpoint.get("global_step")


def evaluate(args: EvaluateArgs) -> tuple[EvaluationResult, Path]:
    device = default_device() if args.device == "auto" else args.device
    ckpt_path = find_checkpoint(args.ckpt, stage=args.stage, log_dir=args.log_dir)
    run_dir = run_of_checkpoint(ckpt_path)
    stage, config, checkpoint_step = run_record(ckpt_path)
    resolution = config["data"]["resolution"]
    start = time.perf_counter()
    if stage == "autoencoder":
        evaluator = ReconstructionEvaluator(RealReference(n=args.n, resolution=resolution), batch_size=args.batch_size)
        result = evaluator.run(load_first_stage(str(run_dir)).to(device).eval(), device)
        settings = {}
        label = f"reconstruction_n{count_label(args.n)}"
    else:
        if args.n % NUM_CLASSES:
            raise SystemExit(f"evaluate: n must be a multiple of {NUM_CLASSES} (n/10 per class prompt), got {args.n}")
        pipe = TextToImage.from_checkpoint(ckpt_path, device=device)
        settings = {"sampler": args.sampler, "steps": args.steps, "guidance": args.guidance}
        if args.guidance_interval is not None:
            settings["guidance_interval"] = list(args.guidance_interval)
        if args.guidance_rescale:
            settings["guidance_rescale"] = args.guidance_rescale
        evaluator = GenerationEvaluator(RealReference(n=args.reference_n, resolution=resolution),
                                        per_prompt=args.n // NUM_CLASSES, seed=args.seed, batch_size=args.batch_size)
        result = evaluator.run(lambda prompts, seeds: pipe.sample(prompts, seeds, **settings), device,
                               keep_samples=args.save_samples)
        label = f"n{count_label(args.n)}_{args.sampler}_s{args.steps}_g{args.guidance:g}_seed{args.seed}"
        if args.guidance_interval is not None:
            label += "_interval" + "-".join(f"{v:g}" for v in args.guidance_interval)
        if args.guidance_rescale:
            label += f"_rescale{args.guidance_rescale:g}"
    result.details.update(
        stage=stage, ckpt=str(ckpt_path), step=checkpoint_step, device=str(device),
        seconds=time.perf_counter() - start, **settings,
        seeds={"first": args.seed, "count": result.details["n"]} if stage == "ldm" else None,
    )
    out = Path(args.out_dir) if args.out_dir else run_dir / "evaluation" / label
    result.write(out)
    if stage == "ldm" and result.samples is not None:
        _write_samples(out / "samples", result, settings)
    return result, out


def _write_samples(out: Path, result: EvaluationResult, settings: dict) -> None:
    """One PNG per sample and `manifest.jsonl` (file, prompt, seed and the sampler settings)."""
    out.mkdir(parents=True, exist_ok=True)
    images = result.samples.float() / 127.5 - 1
    lines = []
    for i, (image, prompt, seed) in enumerate(zip(to_pil(images), result.prompts, result.seeds)):
        name = f"{i:05d}.png"
        image.save(out / name)
        lines.append(json.dumps({"file": name, "prompt": prompt, "seed": seed, **settings}))
    atomic_write(out / "manifest.jsonl", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result, out = evaluate(args)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if "/" not in k)
    log.info("Evaluation (%s): %s", result.details["reference"], summary)
    log.info("Wrote %s", out / "evaluation.json")
    sys.stdout.write(json.dumps({"out_dir": str(out), "args": asdict(args), **result.to_json()}) + "\n")
    return out
