"""Experiment loggers. W&B picks its own mode so that a run never prompts or hangs:
online with credentials and a reachable server, offline otherwise (sync later)."""

from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from lightning.pytorch.loggers import Logger, WandbLogger

log = logging.getLogger(__name__)

DEFAULT_WANDB_URL = "https://api.wandb.ai"
REACHABILITY_TIMEOUT_S = 3.0


def resolve_wandb_mode(mode: str) -> str:
    """`auto` → "online" if an API key and the server are there, else "offline".
    An explicit WANDB_MODE in the environment always wins (W&B's own convention)."""
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:
        return env_mode
    if mode != "auto":
        return mode
    url = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_URL))
    host = url.hostname or "api.wandb.ai"
    if not _has_credentials(host):
        log.info("W&B: no API key (WANDB_API_KEY or `wandb login`) - logging offline.")
        return "offline"
    if not _reachable(host, url.port or 443):
        log.info("W&B: %s unreachable - logging offline.", host)
        return "offline"
    return "online"


def _has_credentials(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=REACHABILITY_TIMEOUT_S):
            return True
    except OSError:
        return False


def make_wandb_logger(
    project: str,
    name: str,
    save_dir: str,
    group: str | None = None,
    tags: list[str] | None = None,
    mode: Literal["auto", "online", "offline", "disabled"] = "auto",
    log_model: bool = False,
    id: str | None = None,
) -> WandbLogger:
    """A WandbLogger whose mode is resolved up front (see `resolve_wandb_mode`)."""
    resolved = resolve_wandb_mode(mode)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        name=name,
        save_dir=save_dir,
        group=group,
        tags=list(tags or []),
        mode=resolved,
        log_model=log_model,
        id=id,
        resume="allow" if id else None,
    )


def finish_loggers(loggers: list[Logger]) -> None:
    """Close W&B runs (one per job, so multirun jobs never share a run) and say how to sync."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger) or logger._experiment is None:
            continue
        run = logger.experiment
        offline = bool(getattr(run.settings, "_offline", False)) or run.settings.mode == "offline"
        run_dir = Path(run.dir).parent
        run.finish()
        if offline:
            log.info("W&B ran offline. Upload this run with:\n  wandb sync %s", run_dir)
