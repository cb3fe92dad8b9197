"""Export a phase-2 model for the Stable Diffusion ecosystem.

    python scripts/export.py ckpt=outputs/ldm/<date>/<time> format=diffusers out=exports/my-model
    python scripts/export.py ckpt=latest format=sd out=exports/my-model.safetensors
    python scripts/export.py ckpt=<run> format=diffusers out=<dir> scheduler.sampler=euler scheduler.spacing=trailing

`ckpt` is a phase-2 run directory, a `.ckpt`, or `latest`. format=diffusers writes a
`StableDiffusionPipeline.from_pretrained` folder whose scheduler reproduces `scheduler.*` (GuidedSampler's
options); format=sd writes one original-layout `.safetensors`. Keys are checked against `ExportArgs`: a
misspelt one is an error that lists the valid keys.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ldm_train.interop import SamplerSettings, export_diffusers, export_sd
from ldm_train.text_to_image import TextToImage

FORMATS = ("diffusers", "sd")
log = logging.getLogger("export")


@dataclass
class ExportArgs:
    ckpt: str = "???"  # phase-2 run directory, .ckpt, or `latest`
    log_dir: str = "outputs"  # where ckpt=latest looks for phase-2 runs
    format: str = "???"  # diffusers | sd
    out: str = "???"  # output folder (diffusers) or .safetensors file (sd)
    overwrite: bool = False  # replace an existing output
    device: str = "cpu"  # where the checkpoint is loaded
    include_text_encoder: bool = True  # format=sd: write cond_stage_model.* (CLIP only)
    # format=diffusers: the sampler the exported scheduler reproduces
    scheduler: SamplerSettings = field(default_factory=SamplerSettings)


def parse_args(argv: list[str]) -> ExportArgs:
    """key=value arguments merged onto the ExportArgs schema (types checked, unknown keys rejected)."""
    schema = OmegaConf.structured(ExportArgs)
    try:
        cfg = OmegaConf.merge(schema, OmegaConf.from_cli(argv))
        args = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        keys = [k for k in ExportArgs.__dataclass_fields__ if k != "scheduler"]
        keys += [f"scheduler.{k}" for k in SamplerSettings.__dataclass_fields__]
        raise SystemExit(f"export: {error}\nValid keys: {', '.join(keys)}.") from error
    if args.format not in FORMATS:
        raise SystemExit(f"export: format={args.format!r}; use format=diffusers or format=sd.")
    try:
        args.scheduler.check()  # before minutes of checkpoint loading
    except ValueError as error:
        raise SystemExit(f"export: scheduler.*: {error}") from error
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    pipe = TextToImage.from_checkpoint(args.ckpt, device=args.device, log_dir=args.log_dir)
    if args.format == "diffusers":
        out = export_diffusers(pipe, args.out, args.scheduler, overwrite=args.overwrite)
    else:
        out = export_sd(
            pipe, args.out, include_text_encoder=args.include_text_encoder, overwrite=args.overwrite
        )
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
