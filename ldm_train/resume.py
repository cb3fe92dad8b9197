"""Which checkpoint a run starts from: `resume=never`, `resume=auto` or `resume=<path>`.

`auto` continues the newest *unfinished* run of the same name and stage: a run directory under
the log dir (single runs) holding `checkpoints/last.ckpt` and no `FINISHED` marker. A run that
returned normally writes the marker, so finished work is never resumed twice.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
FINISHED_MARKER = "FINISHED"
LAST_CKPT = Path("checkpoints") / "last.ckpt"


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    mode = str(cfg.resume)
    if mode == "never":
        return None
    if mode == "auto":
        found = find_unfinished_run(Path(cfg.paths.log_dir) / cfg.stage_name, cfg.name, Path(cfg.paths.output_dir))
        if found is not None:
            log.info("resume=auto: continuing %s", found)
        return None if found is None else str(found)
    path = Path(mode)
    if path.is_dir():
        path = path / LAST_CKPT
    if not path.is_file():
        raise FileNotFoundError(
            f"resume={mode}: no checkpoint at {path}. Give a .ckpt file or a run directory holding "
            f"{LAST_CKPT}, or use resume=auto / resume=never."
        )
    return str(path)


def find_unfinished_run(stage_dir: Path, name: str, current_dir: Path) -> Path | None:
    """Newest `last.ckpt` of an unfinished run called `name` below `stage_dir` (not this run)."""
    candidates = []
    for ckpt in stage_dir.glob(f"*/*/{LAST_CKPT}"):
        run_dir = ckpt.parent.parent
        if run_dir.resolve() == current_dir.resolve() or (run_dir / FINISHED_MARKER).exists():
            continue
        config = run_dir / "config_resolved.yaml"
        if config.exists() and OmegaConf.load(config).get("name") != name:
            continue
        candidates.append(ckpt)
    # Run directories are <date>/<time>: the lexicographic maximum is the newest run.
    return max(candidates, key=lambda p: p.parent.parent.relative_to(stage_dir).parts, default=None)


@rank_zero_only
def mark_finished(output_dir: str) -> None:
    Path(output_dir, FINISHED_MARKER).touch()
