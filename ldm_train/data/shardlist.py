"""Shard patterns -> checked URL lists, and the per-epoch split of shards over ranks and workers."""

import os
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from webdataset.shardlists import expand_urls

_FIX_HINT = (
    "check the path (brace ranges like shard-{000000..000009}.tar must match the files on disk), "
    "or write shards first with `python scripts/make_shards.py IMAGE_DIR OUT_DIR`"
)


def _local_path(url: str) -> str | None:
    """The file-system path of a local shard, or None for pipe:/remote URLs."""
    if url.startswith("pipe:"):
        return None
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return parsed.path
    # One-letter schemes are Windows drive letters, not URLs.
    return url if len(parsed.scheme) <= 1 else None


def expand_shards(pattern: str) -> list[str]:
    """ "a-{000..009}.tar", "x::y" (webdataset's list separator), a directory of .tar files, or
    pipe:/http(s)/s3 URLs -> the list of shard URLs. Local shards are checked to exist now, so a
    typo fails at start-up instead of hours into a run; remote ones are opened when read."""
    if not pattern or not pattern.strip():
        raise ValueError(f"empty shard pattern {pattern!r}: set the data module's shard pattern, {_FIX_HINT}")
    if os.path.isdir(pattern):
        urls = sorted(str(path) for path in Path(pattern).glob("*.tar"))
    else:
        urls = expand_urls(pattern)
    if not urls:
        raise ValueError(f"shard pattern {pattern!r} matches no shards: {_FIX_HINT}")
    missing = [url for url in urls if (path := _local_path(url)) is not None and not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(urls)} shards of pattern {pattern!r} do not exist "
            f"(first: {missing[0]}): {_FIX_HINT}"
        )
    return urls


def epoch_order(urls: list[str], seed: int, epoch: int, shuffle: bool) -> list[str]:
    """The epoch's shard order, identical on every rank and worker (same seed, same epoch), so
    slicing it by global worker index gives disjoint shard sets."""
    if not shuffle:
        return list(urls)
    permutation = np.random.default_rng([seed, epoch]).permutation(len(urls))
    return [urls[index] for index in permutation]


def split_for_worker(urls: list[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """Shards of one DataLoader worker on one rank: every (world_size × num_workers)-th shard."""
    global_worker = rank * num_workers + worker
    return urls[global_worker :: world_size * num_workers]
