"""`ldm-sample ckpt=<phase-2 run dir, .ckpt or latest> prompt="..." n_per_prompt=4 ...` (the same command:
`python -m ldm_train.sample`, `ldm-train sample`, `python scripts/sample.py`)

Writes one PNG per image, `manifest.jsonl` ({"file","prompt","seed","sampler","steps","guidance"}
per line) and `grid.png` into `out_dir`. Image j of the whole job uses seed `seed + j`, so a
subset or a different batch size reproduces the same images.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from omegaconf import OmegaConf
from rich.progress import Progress

from ldm_train.speed import default_device
from ldm_train.text_to_image import TextToImage, to_pil

log = logging.getLogger(__name__)


@dataclass
class SampleArgs:
    ckpt: str = "latest"
    prompt: str | None = None
    prompts: str | None = None  # a text file, one prompt per line
    n_per_prompt: int = 4
    sampler: str = "dpmpp_2m"
    steps: int = 25
    guidance: float = 3.0
    guidance_interval: list[float] | None = None  # [σ_lo, σ_hi]: guide only there (Kynkäänniemi et al. 2024)
    guidance_rescale: float = 0.0  # φ of Lin et al. (2024)'s guidance rescale
    autoguide: str | None = None  # a weaker phase-2 checkpoint: autoguidance (Karras et al. 2024) instead of CFG
    seed: int = 0
    batch_size: int = 64
    out_dir: str = "samples"
    device: str = "auto"  # auto: the accelerator when there is one (ldm_train.speed.default_device), else the CPU
    log_dir: str = "outputs"


def parse_args(argv: list[str]) -> SampleArgs:
    """key=value arguments checked against SampleArgs: a misspelt key or a wrong type fails here."""
    schema = OmegaConf.structured(SampleArgs)
    args = OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.from_dotlist(argv)))
    if (args.prompt is None) == (args.prompts is None):
        raise SystemExit("sample.py: give exactly one of prompt=\"...\" or prompts=<file with one prompt per line>.")
    return args


def read_prompts(args: SampleArgs) -> list[str]:
    if args.prompt is not None:
        return [args.prompt]
    path = Path(args.prompts)
    if not path.is_file():
        raise SystemExit(f"sample.py: prompts file {path} does not exist.")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise SystemExit(f"sample.py: {path} holds no prompts (one per line).")
    return prompts


def main(argv: list[str] | None = None) -> None:
    """Samples as `argv` (else sys.argv) says; returns None, the exit status of the `ldm-sample` script."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = default_device() if args.device == "auto" else args.device
    ckpt = args.ckpt
    pipe = TextToImage.from_checkpoint(ckpt if ckpt != "latest" else "latest", device=device, log_dir=args.log_dir)
    guide = pipe.load_autoguide(args.autoguide, log_dir=args.log_dir) if args.autoguide else None
    options = dict(guidance_interval=args.guidance_interval, guidance_rescale=args.guidance_rescale, autoguide=guide)
    jobs = [(p, args.seed + j) for j, p in enumerate(p for p in read_prompts(args) for _ in range(args.n_per_prompt))]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    with Progress() as progress, (out / "manifest.jsonl").open("w") as manifest:
        task = progress.add_task("sampling", total=len(jobs))
        for start in range(0, len(jobs), args.batch_size):
            chunk = jobs[start : start + args.batch_size]
            batch = pipe.sample([p for p, _ in chunk], [s for _, s in chunk], args.sampler, args.steps, args.guidance,
                                **options)
            for offset, (image, (prompt, seed)) in enumerate(zip(to_pil(batch), chunk)):
                name = f"{start + offset:05d}.png"
                image.save(out / name)
                manifest.write(json.dumps({"file": name, "prompt": prompt, "seed": seed, "sampler": args.sampler,
                                           "steps": args.steps, "guidance": args.guidance}) + "\n")
            images.append(batch)
            progress.advance(task, len(chunk))
    grid = torch.cat(images)
    torchvision.utils.save_image((grid + 1) / 2, out / "grid.png", nrow=max(1, args.n_per_prompt))
    log.info("Wrote %d images, manifest.jsonl and grid.png to %s", len(jobs), out)


if __name__ == "__main__":
    main()
