"""Samples of one webdataset shard, read so that a fault costs only the samples it touches.

A shard is a tar stream (a file, a pipe or HTTP: read once, front to back, never seeked); a sample is
the consecutive members sharing a key (`a/b.jpg`, `a/b.txt` -> key `a/b`; webdataset's rule). Faults:

- a duplicated member name inside a sample: that sample is ambiguous and dropped; the rest is read;
- a damaged tar header: reading resumes at the next block that is a valid header (tar members are
  512-byte aligned, so overwritten bytes do not shift the ones after them); the sample the damage
  hit reaches the decoder incomplete and is skipped there, the samples after it are read;
- a stream that ends inside a member (truncated shard): the partial sample is handed on (and
  skipped by the decoder); nothing after it exists to be read.

A dropped sample is reported through `skip(reason, what)` (counted once). Every damaged stretch is
logged; it is counted through `skip` only when no incomplete sample carries its loss to the decoder,
so one fault is one count.
"""

from __future__ import annotations

import logging
import re
import tarfile
from collections.abc import Callable, Iterator
from typing import BinaryIO

log = logging.getLogger(__name__)
BLOCK = 512  # tar's block size: headers and data are aligned to it
END_BLOCK = bytes(BLOCK)  # a zero block ends the archive
NAME_ENCODING = "utf-8"
_META = re.compile(r"(^|/)__[^/]*__$")  # webdataset's metadata members (not sample data)
_KEY_AND_SUFFIX = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


class Damage:
    """Where the stream could not be parsed; `reason` says how."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _read(stream: BinaryIO, size: int) -> bytes:
    """Exactly `size` bytes, fewer only at the end of the stream (pipes return short reads)."""
    parts, left = [], size
    while left > 0:
        part = stream.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def tar_members(stream: BinaryIO) -> Iterator[tuple[str, bytes] | Damage]:
    """(name, data) of each regular file in the tar stream, in order; a `Damage` where a header was
    invalid (reading resumes at the next valid header) or the stream ended inside a member."""
    pending_name: str | None = None  # from a GNU long-name or PAX header, for the next member
    in_damage = False
    while True:
        block = _read(stream, BLOCK)
        if not block or block == END_BLOCK:
            return
        if len(block) < BLOCK:
            yield Damage("the shard ends inside a tar header")
            return
        try:
            info = tarfile.TarInfo.frombuf(block, NAME_ENCODING, "surrogateescape")
        except tarfile.HeaderError as error:
            if not in_damage:
                yield Damage(f"damaged tar header ({error})")
            in_damage = True  # look for the next valid header, block by block
            continue
        in_damage = False
        data = _read(stream, info.size)
        _read(stream, -info.size % BLOCK)  # padding to the block boundary
        if len(data) < info.size:
            yield Damage(f"the shard ends inside member {pending_name or info.name!r}")
            return
        if info.type == tarfile.GNUTYPE_LONGNAME:
            pending_name = data.rstrip(b"\0").decode(NAME_ENCODING, "surrogateescape")
        elif info.type == tarfile.XHDTYPE:
            pending_name = _pax_path(data) or pending_name
        elif info.isreg():
            name, pending_name = pending_name or info.name, None
            yield name, data
        elif info.type != tarfile.XGLTYPE:
            pending_name = None  # a directory, link, ...: not sample data


def _pax_path(records: bytes) -> str | None:
    """The `path` of a PAX extended header ("<length> path=<name>\n" records)."""
    for record in records.split(b"\n"):
        _, _, field = record.partition(b" ")
        key, _, value = field.partition(b"=")
        if key == b"path":
            return value.decode(NAME_ENCODING, "surrogateescape")
    return None


def read_tar_samples(stream: BinaryIO, url: str, skip: Callable[[str, str], None]) -> Iterator[dict]:
    """Samples ({"__key__", "__url__", "<suffix>": bytes, ...}) of a tar stream; a sample with a
    duplicated member is dropped and reported, and reading goes on (see the module doc)."""
    sample: dict | None = None
    duplicate: str | None = None  # the repeated member of `sample`, which is then dropped
    unreported: Damage | None = None  # damage no incomplete sample has carried to the decoder yet

    def finish() -> Iterator[dict]:
        nonlocal unreported
        if sample is None:
            return
        if duplicate is not None:
            skip(f"duplicate member {duplicate!r} in the tar file", f"sample {sample['__key__']!r} of {url}")
        else:
            yield sample
        unreported = None  # the sample in progress (dropped here, or incomplete for the decoder) carries it

    for item in tar_members(stream):
        if isinstance(item, Damage):
            log.warning("%s: %s", url, item.reason)
            if unreported is not None:
                skip(unreported.reason, url)
            unreported = item
            continue
        name, data = item
        match = _KEY_AND_SUFFIX.match(name)
        if match is None or _META.search(name):
            continue
        key, suffix = match.group(1), match.group(2).lower()
        if sample is None or key != sample["__key__"]:
            yield from finish()
            sample, duplicate = {"__key__": key, "__url__": url}, None
        if suffix in sample:
            duplicate = name
        else:
            sample[suffix] = data
    yield from finish()
    if unreported is not None:  # damage after the last sample, or in a shard with none
        skip(unreported.reason, url)
