"""Run layout: what a run directory holds, where, and how runs are found again. The one place that
knows these names; resume, checkpoints, exports and the entry points ask here.

    <log_dir>/<stage>/<date>/<time>/      one run (a sweep job: <sweep_dir>/<stage>/<date>/<time>/<job>/)
        config_resolved.yaml, .hydra/     the composed config (`name`, `group`) and the command's overrides
        checkpoints/last.ckpt             the newest full state (what `resume` restores); the best by the metric
        export/autoencoder.{safetensors,json}      phase 1: the VAE handed to phase 2
        first_stage/autoencoder.{safetensors,json} phase 2: its own copy of that export (so the run is whole)
        images/, evaluation/, csv/, wandb/, train.log, run_summary.json
        FINISHED                          written when the run returned normally (never resumed by `auto`)
        .lock                             held by the process running in the directory

Run directories are named by launch time, `<date>/<time>`, so the lexicographic maximum is the newest.
This module sits below `lit/`, `autoencoder/` and the entry points: it imports only the standard
library and OmegaConf.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

RESOLVED_CONFIG = "config_resolved.yaml"
HYDRA_OVERRIDES = Path(".hydra") / "overrides.yaml"
CHECKPOINTS_DIR = "checkpoints"
LAST_CKPT_NAME = "last.ckpt"
LAST_CKPT = Path(CHECKPOINTS_DIR) / LAST_CKPT_NAME
IMAGES_DIR = "images"
EXPORT_DIR = "export"
FIRST_STAGE_DIR = "first_stage"
EXPORT_WEIGHTS = "autoencoder.safetensors"
EXPORT_CONFIG = "autoencoder.json"
FINISHED_MARKER = "FINISHED"
LOCK_FILE = ".lock"
LATEST = "latest"


# -- runs and their markers ----------------------------------------------------------------------
def runs_of(stage_dir: str | Path) -> list[Path]:
    """The run directories (`<date>/<time>`) below `<log_dir>/<stage>`, oldest first."""
    return sorted((p for p in Path(stage_dir).glob("*/*") if p.is_dir()), key=lambda p: p.parts)


def is_finished(run_dir: Path) -> bool:
    return (run_dir / FINISHED_MARKER).exists()


def mark_finished(run_dir: str | Path) -> None:
    Path(run_dir, FINISHED_MARKER).touch()


def unmark_finished(run_dir: str | Path) -> None:
    Path(run_dir, FINISHED_MARKER).unlink(missing_ok=True)


def run_config(run_dir: Path) -> DictConfig | None:
    """The run's resolved config (None when it has not written one)."""
    path = run_dir / RESOLVED_CONFIG
    return OmegaConf.load(path) if path.is_file() else None


def is_run_dir(path: Path) -> bool:
    return (path / RESOLVED_CONFIG).is_file()


def run_of_checkpoint(ckpt: Path) -> Path:
    """The run directory a checkpoint belongs to: `<run>/checkpoints/x.ckpt` → `<run>`; a `.ckpt`
    anywhere else → its own folder."""
    return ckpt.parent.parent if ckpt.parent.name == CHECKPOINTS_DIR else ckpt.parent


# -- checkpoints ---------------------------------------------------------------------------------
def find_checkpoint(path: str | Path, stage: str, log_dir: str | Path = "outputs") -> Path:
    """A `.ckpt` file; a run directory (→ its `checkpoints/last.ckpt`); or `latest` (→ the newest
    run of `stage` under `log_dir` that has one)."""
    if str(path) == LATEST:
        runs = [run / LAST_CKPT for run in runs_of(Path(log_dir, stage)) if (run / LAST_CKPT).is_file()]
        if not runs:
            raise FileNotFoundError(
                f"ckpt=latest: no {stage} run with {LAST_CKPT} under {Path(log_dir, stage)}. "
                f"Train one with `python train.py stage={stage}` or pass ckpt=<run dir or .ckpt>."
            )
        return runs[-1]
    path = Path(path)
    if path.is_dir():
        path = path / LAST_CKPT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: pass a .ckpt file or a run directory holding {LAST_CKPT}.")
    return path


# -- phase-1 exports -----------------------------------------------------------------------------
def export_weights_in(path: Path) -> Path:
    """`path` itself, or the export weights inside a run directory or an export folder."""
    if path.is_dir():
        for candidate in (path / EXPORT_DIR / EXPORT_WEIGHTS, path / EXPORT_WEIGHTS):
            if candidate.exists():
                return candidate
    return path


def is_export(weights: Path) -> bool:
    return weights.name == EXPORT_WEIGHTS and (weights.parent / EXPORT_CONFIG).is_file()


def latest_finished_export(search_dirs: list[str], group: str | None) -> Path:
    """`first_stage.ckpt=latest`: the export of the newest *finished* phase-1 run of experiment group
    `group` (the run's `group`, null included) below any of `search_dirs` (`<log_dir>/autoencoder`).
    The config check and `load_first_stage` both look it up; the one that loads it logs the choice."""
    found = []
    for stage_dir in search_dirs:
        for run in runs_of(stage_dir):
            weights = run / EXPORT_DIR / EXPORT_WEIGHTS
            config = run_config(run) if is_export(weights) and is_finished(run) else None
            if config is not None and config.get("group") == group:
                found.append(run)
    if not found:
        raise FileNotFoundError(
            f"first_stage.ckpt=latest: no phase-1 export ({EXPORT_DIR}/{EXPORT_WEIGHTS}) of a {FINISHED_MARKER} run "
            f"of group {group!r} under {', '.join(map(str, search_dirs))}. Train one with `python train.py "
            "stage=autoencoder` (and the same experiment=), or set first_stage.ckpt=<run dir, export dir, "
            "diffusers VAE folder, or SD .safetensors/.ckpt>."
        )
    newest = max(found, key=lambda run: run.parts[-2:])
    return newest / EXPORT_DIR / EXPORT_WEIGHTS


# -- phase 2's own copy of its first stage ---------------------------------------------------------
def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def first_stage_record(source: str | Path | None) -> dict | None:
    """What a phase-2 checkpoint records about its VAE. A phase-1 export: the path of the run's own
    copy, relative to the run directory, and the weights' SHA-256; any other source (a diffusers
    folder, an SD file): its path as given, unhashed (it is not copied)."""
    if source is None:
        return None
    source = Path(source)
    if not is_export(source):
        return {"path": str(source.resolve()), "sha256": None, "copied_from": None}
    return {"path": str(Path(FIRST_STAGE_DIR) / EXPORT_WEIGHTS), "sha256": file_sha256(source),
            "copied_from": str(source.resolve())}


def adopt_first_stage(source: str | Path | None, run_dir: str | Path) -> None:
    """Hard-link (or copy, across filesystems) a phase-1 export into `<run_dir>/first_stage/`, so the
    phase-2 run directory holds everything sampling needs. A copy already there must be the same VAE:
    a resumed run that would now train on another one fails."""
    if source is None or not is_export(Path(source)):
        return
    source, target = Path(source), Path(run_dir) / FIRST_STAGE_DIR
    held = target / EXPORT_WEIGHTS
    if held.is_file():
        if held.resolve() == source.resolve() or file_sha256(held) == file_sha256(source):
            return
        raise ValueError(
            f"{held} (this run's first stage) differs from {source}: the run was started on another VAE. "
            f"Continue it with first_stage.ckpt={held}, or start a new run with resume=never."
        )
    for name in (EXPORT_CONFIG, EXPORT_WEIGHTS):  # the weights last: their presence means the copy is whole
        _link_or_copy(source.parent / name, target / name)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another filesystem, or one without hard links
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def first_stage_path(checkpoint: dict, ckpt_path: Path) -> Path:
    """The VAE a phase-2 checkpoint was trained with: its run's copy (the checkpoint's run directory
    or its own folder), checked against the recorded SHA-256; older checkpoints name an absolute path."""
    record = checkpoint.get("first_stage")
    if record is None:  # checkpoints written before runs held their own copy
        if checkpoint.get("first_stage_source") is None:
            raise ValueError(f"{ckpt_path} records no first stage (VAE); is it a phase-2 checkpoint?")
        return Path(checkpoint["first_stage_source"])
    path = Path(record["path"])
    if path.is_absolute():
        return path
    candidates = [run_of_checkpoint(ckpt_path) / path, ckpt_path.parent / path]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise FileNotFoundError(
            f"{ckpt_path}: its first stage {path} is not in {' or '.join(str(c.parent) for c in candidates)}. "
            f"Copy the run directory whole (with {FIRST_STAGE_DIR}/), or put {FIRST_STAGE_DIR}/ next to the checkpoint; "
            f"the run was trained on {record.get('copied_from')} (sha256 {record['sha256']})."
        )
    if record.get("sha256") and file_sha256(found) != record["sha256"]:
        raise ValueError(f"{found}: its SHA-256 differs from the one {ckpt_path} records ({record['sha256']}): "
                         "another VAE than the one the model was trained with.")
    return found
