"""How a run continues: `resume=auto` (the default), `resume=never` or `resume=<run dir | .ckpt>`.

A resumed run continues in its old run directory, so one run keeps one directory, one
`metrics.csv`, one W&B run and one set of checkpoints:

- `${resume_dir:<new dir>}` (configs/hydra/default.yaml) picks Hydra's run directory before the
  run starts. `auto`: the newest *unfinished* run of the same stage started with the same command
  (same name and command-line overrides, except `resume` and `trainer.max_steps/max_epochs/max_time`,
  which may change to extend a run) that holds `checkpoints/last.ckpt` and is not running now;
  else a new directory. `<run dir>` or a checkpoint inside one: that run. `never`, or a checkpoint
  outside any run directory: a new directory.
- `resolve_ckpt_path` then names the checkpoint `trainer.fit` restores.
- `prepare_run` records the code version (git sha) in the config and keeps the W&B run id in the
  run directory, so the resumed run logs to the same W&B run.

A run that returned normally writes a `FINISHED` marker, so finished work is never resumed by
`auto`. A run killed after its final checkpoint but before `FINISHED` is resumed and completes the
end-of-training work it had not finished (export, latent scale, final images, evaluation, run summary:
ldm_train/lit/fault_tolerance.py `finish_when_restored_complete`), then writes `FINISHED`. A run holds an exclusive lock on `<run dir>/.lock` while it lives (released by the OS even
on SIGKILL), so `auto` never picks a run that is still going, and two processes never share one.
"""

from __future__ import annotations

import fcntl
import logging
import pickle
import secrets
import string
import subprocess
from pathlib import Path
from typing import IO

import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from ldm_train import runs
from ldm_train.files import remove_stale_temps
from ldm_train.runs import HYDRA_OVERRIDES, LAST_CKPT, LOCK_FILE, RESOLVED_CONFIG

log = logging.getLogger(__name__)
WANDB_ID_FILE = "wandb_run_id"
WANDB_ID_CHARS = string.ascii_lowercase + string.digits  # W&B's own id alphabet and length
WANDB_ID_LENGTH = 8
# Overrides that may differ between a run and its continuation (resume it, or let it run longer).
CONTINUATION_KEYS = frozenset({"resume", "trainer.max_steps", "trainer.max_epochs", "trainer.max_time"})
REPO = Path(__file__).resolve().parent.parent

_run_dir: str | None = None  # this process's run directory, chosen once
_lock: IO | None = None  # held open for the life of the process


# -- the run directory (Hydra resolver) --------------------------------------------------------
def resume_dir(new_dir: str, *, _root_: DictConfig) -> str:
    """Hydra's run directory: the run to continue, or `new_dir`. Chosen once per process, so later
    resolutions of `hydra.run.dir` (Lightning's DDP launcher reads it) agree with the first."""
    global _run_dir
    if _run_dir is None:
        _run_dir = str(choose_run_dir(new_dir, _root_))
    return _run_dir


def _launched_as_rank_zero() -> bool:
    # torchrun / srun start every rank with the resolver: only rank 0 holds (and honours) run locks,
    # so all ranks choose the same directory. Lightning's own launcher passes its ranks the directory.
    return rank_zero_only.rank == 0


def choose_run_dir(new_dir: str, root: DictConfig) -> Path:
    """The run directory for the composed config `root` (it needs `resume`, `name`, `stage_name`,
    `paths.log_dir` and `hydra.overrides.task`); `new_dir` when no run is continued."""
    mode = str(root.resume)
    if mode == "never":
        return Path(new_dir)
    if mode == "auto":
        overrides = [str(o) for o in root.hydra.overrides.task]
        found = find_unfinished_run(Path(root.paths.log_dir) / root.stage_name, root.name, Path(new_dir), overrides)
        return Path(new_dir) if found is None else found.parent.parent
    path = Path(mode)
    run = path if path.is_dir() else runs.run_of_checkpoint(path)
    return run if runs.is_run_dir(run) else Path(new_dir)


def _hold_lock(run_dir: Path) -> None:
    global _lock
    if _lock is not None:  # the previous job of a multirun sweep in this process is over
        _lock.close()
        _lock = None
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = (run_dir / LOCK_FILE).open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise RuntimeError(
            f"{run_dir} is in use by another process that is still running. Wait for it, stop it, or "
            "start a separate run with resume=never."
        ) from None
    except OSError:  # a filesystem without locks: run unguarded
        log.debug("no file locks on %s", run_dir)
    _lock = lock


def _is_running(run_dir: Path) -> bool:
    if not (run_dir / LOCK_FILE).exists():
        return False
    with (run_dir / LOCK_FILE).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


def _continuation_invariant(overrides: list[str]) -> list[str]:
    return sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in CONTINUATION_KEYS)


def find_unfinished_run(stage_dir: Path, name: str, current_dir: Path, overrides: list[str] | None = None) -> Path | None:
    """Newest `last.ckpt` of an unfinished, idle run called `name` below `stage_dir` (not
    `current_dir`); with `overrides`, only runs started with the same ones (see CONTINUATION_KEYS)."""
    candidates = []
    for run_dir in runs.runs_of(stage_dir):  # oldest first
        if not (run_dir / LAST_CKPT).is_file() or run_dir.resolve() == current_dir.resolve() or runs.is_finished(run_dir):
            continue
        config = runs.run_config(run_dir)
        if config is not None and config.get("name") != name:
            continue
        if overrides is not None and _continuation_invariant(_run_overrides(run_dir)) != _continuation_invariant(overrides):
            continue
        if _launched_as_rank_zero() and _is_running(run_dir):
            continue
        candidates.append(run_dir / LAST_CKPT)
    return candidates[-1] if candidates else None


def _run_overrides(run_dir: Path) -> list[str]:
    path = run_dir / HYDRA_OVERRIDES
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


# -- the checkpoint to restore -------------------------------------------------------------------
def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint `trainer.fit` restores: with `auto`, this run directory's unfinished
    `last.ckpt` (the directory `resume_dir` chose); with a path, that checkpoint. Says in one line
    which run continues from which step, or that the run starts fresh."""
    mode = str(cfg.resume)
    run_dir = Path(cfg.paths.output_dir)
    if mode == "never":
        _announce(f"resume=never: starting fresh in {run_dir}")
        return None
    if mode == "auto":
        ckpt = run_dir / LAST_CKPT
        if not ckpt.is_file() or runs.is_finished(run_dir):
            _announce(f"resume=auto: starting fresh in {run_dir} (no unfinished run of this command to continue)")
            return None
        _announce(f"resume=auto: continuing {run_dir} from step {checkpoint_step(ckpt)} ({ckpt})")
        return str(ckpt)
    path = Path(mode)
    if path.is_dir():
        path = path / LAST_CKPT
    if not path.is_file():
        raise FileNotFoundError(
            f"resume={mode}: no checkpoint at {path}. Give a .ckpt file or a run directory holding "
            f"{LAST_CKPT}, or use resume=auto / resume=never."
        )
    if path.resolve().is_relative_to(run_dir.resolve()):
        _unmark_finished(run_dir)  # a finished run continued (e.g. with more steps) is unfinished again
    _announce(f"resume={mode}: continuing from step {checkpoint_step(path)} in {run_dir}")
    return str(path)


def checkpoint_step(ckpt: Path) -> int | str:
    """The optimizer step a Lightning checkpoint was saved at (memory-mapped: no tensor is read)."""
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"]
    except (OSError, RuntimeError, KeyError, pickle.UnpicklingError):  # Lightning's own load reports a bad file
        return "?"


@rank_zero_only
def _announce(line: str) -> None:
    log.info(line)


@rank_zero_only
def _unmark_finished(run_dir: Path) -> None:
    runs.unmark_finished(run_dir)


@rank_zero_only
def mark_finished(output_dir: str) -> None:
    runs.mark_finished(output_dir)


# -- what the run records so its continuation can pick it up -------------------------------------
def prepare_run(cfg: DictConfig) -> None:
    """Locks the run directory for this process's lifetime (rank 0), removes the temporary files of
    writes a killed process left unfinished (checkpoints, exports, metrics), adds `git_sha` to the config
    (it reaches config_resolved.yaml, the checkpoint's hparams and the W&B run config) and gives the
    W&B logger this run directory's run id."""
    run_dir = Path(cfg.paths.output_dir)
    if _launched_as_rank_zero():
        _hold_lock(run_dir)
        for stale in remove_stale_temps(run_dir):  # no other process writes here: this one holds the lock
            log.info("Removed %s, the unfinished write of a process that was killed.", stale)
    sha = git_sha()
    previous = run_dir / RESOLVED_CONFIG
    if previous.is_file() and (old := OmegaConf.load(previous).get("git_sha")) not in (None, sha):
        log.warning("This run continues one started from code %s; the code is now %s.", old, sha)
    wandb = (cfg.get("logger") or {}).get("wandb")
    with open_dict(cfg):
        cfg.git_sha = sha
        if wandb is not None and not wandb.get("id"):
            wandb.id = wandb_run_id(run_dir)


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id kept in `<run dir>/wandb_run_id`; a new run gets a new id (written by rank 0)."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = "".join(secrets.choice(WANDB_ID_CHARS) for _ in range(WANDB_ID_LENGTH))
    _write_text(path, run_id)
    return run_id


@rank_zero_only
def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def git_sha(repo: Path = REPO) -> str:
    """HEAD's commit of the code being run, `-dirty` with uncommitted changes; `unknown` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


# Registered on import: ldm_train.train imports this module before Hydra composes the config.
OmegaConf.register_new_resolver("resume_dir", resume_dir, replace=True)
