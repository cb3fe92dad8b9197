"""An image folder with captions -> webdataset shards (the core of scripts/make_shards.py).

Captions come from a same-named .txt next to each image (cat.jpg + cat.txt), or from a CSV (columns
`file`, `caption`) / JSONL ({"file": ..., "caption": ...}) file whose paths are relative to the folder.
Each image is decoded once with the training loader's decoder, so every sample written is one the
loader can read; the rest are counted by reason.
"""

import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ldm_train.data.decode import IMAGE_KEYS, SkipSample, decode_image
from ldm_train.data.shards import ShardWriter, write_manifest

CAPTION_SUFFIX = ".txt"
_KEY_DIGITS = 9
_CANONICAL_EXT = {"jpeg": "jpg"}


@dataclass
class ConversionReport:
    written: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    shards: list[str] = field(default_factory=list)
    pattern: str = ""

    def summary(self) -> str:
        lines = [f"written: {self.written} samples in {len(self.shards)} shards ({self.pattern})"]
        lines.append(f"skipped: {sum(self.skipped.values())}")
        lines += [f"  {count:>8}  {reason}" for reason, count in sorted(self.skipped.items())]
        return "\n".join(lines)


def _entries_from_sidecars(image_dir: Path, report: ConversionReport) -> Iterator[tuple[Path, bytes | None]]:
    for path in sorted(p for p in image_dir.rglob("*") if p.is_file()):
        extension = path.suffix.lower().lstrip(".")
        if path.suffix.lower() == CAPTION_SUFFIX:
            continue  # caption files are read with their image
        if extension not in IMAGE_KEYS:
            report.skipped[f"unsupported file type ({path.suffix or 'no extension'})"] += 1
            continue
        caption_path = path.with_suffix(CAPTION_SUFFIX)
        yield path, caption_path.read_bytes() if caption_path.is_file() else None


def _json_row(line: str) -> dict | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None  # counted as a bad row by the caller


def _entries_from_table(
    image_dir: Path, table: Path, report: ConversionReport
) -> Iterator[tuple[Path, bytes | None]]:
    with open(table, newline="", encoding="utf-8") as stream:
        if table.suffix.lower() == ".csv":
            rows = csv.DictReader(stream)
            if rows.fieldnames is None or not {"file", "caption"} <= set(rows.fieldnames):
                raise ValueError(
                    f"{table}: a captions CSV needs the columns 'file' and 'caption', found {rows.fieldnames}"
                )
        elif table.suffix.lower() == ".jsonl":
            rows = (_json_row(line) for line in stream if line.strip())
        else:
            raise ValueError(f"{table}: captions file must be .csv or .jsonl, got {table.suffix!r}")
        for row in rows:
            if not isinstance(row, dict) or "file" not in row or "caption" not in row:
                report.skipped["captions-file row without file and caption"] += 1
                continue
            yield image_dir / row["file"], str(row["caption"]).encode("utf-8")


def _encode_sample(path: Path, caption: bytes | None, image_dir: Path, index: int) -> dict:
    extension = path.suffix.lower().lstrip(".")
    if extension not in IMAGE_KEYS:
        raise SkipSample(f"unsupported file type (.{extension})")
    if not path.is_file():
        raise SkipSample("image file missing")
    if caption is None:
        raise SkipSample("no caption")
    try:
        text = caption.decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise SkipSample("caption is not UTF-8") from error
    data = path.read_bytes()
    decode_image(data)  # raises SkipSample("undecodable image ...") for files the loader cannot read
    source = str(path.relative_to(image_dir)) if path.is_relative_to(image_dir) else str(path)
    return {
        "__key__": f"{index:0{_KEY_DIGITS}d}",  # webdataset keys must not contain dots: not the file name
        _CANONICAL_EXT.get(extension, extension): data,
        "txt": text,
        "json": {"caption": text, "source": source},
    }


def folder_to_shards(
    image_dir: str,
    out_dir: str,
    samples_per_shard: int = 1000,
    captions_file: str | None = None,
    prefix: str = "shard",
) -> ConversionReport:
    """Writes `<out_dir>/<prefix>-000000.tar`, ... plus a manifest; returns what was written/skipped."""
    root = Path(image_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {image_dir!r} does not exist: pass the folder that holds the images"
        )
    report = ConversionReport()
    if captions_file is None:
        entries = _entries_from_sidecars(root, report)
    else:
        entries = _entries_from_table(root, Path(captions_file), report)
    with ShardWriter(out_dir, prefix, samples_per_shard) as writer:
        for path, caption in entries:
            try:
                writer.write(_encode_sample(path, caption, root, writer.count))
            except SkipSample as reason:
                report.skipped[str(reason).split(" (")[0]] += 1  # group by reason, not by detail
    report.written, report.shards, report.pattern = writer.count, writer.shards, writer.pattern
    if writer.count == 0:
        raise ValueError(f"no usable images in {image_dir!r}:\n{report.summary()}")
    write_manifest(
        out_dir,
        {prefix: {"pattern": Path(writer.pattern).name, "count": writer.count, "shards": len(writer.shards)}},
    )
    return report
