"""folder_to_shards / scripts/make_shards.py: a folder round-trips through shards and the loader."""

import io
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shard_helpers import jpeg_bytes, png_bytes

from ldm_train.data import WebDatasetDataModule, folder_to_shards
from ldm_train.data.shards import read_manifest

SCRIPT = Path(__file__).parents[2] / "scripts" / "make_shards.py"


def image(value: int) -> Image.Image:
    pixels = np.full((8, 8, 3), value, dtype=np.uint8)
    pixels[0, 0] = (255 - value, 0, value)
    return Image.fromarray(pixels)


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    (root / "sub.dir").mkdir(parents=True)
    (root / "a.png").write_bytes(png_bytes(image(10)))
    (root / "a.txt").write_text("a red square\n")
    (root / "sub.dir" / "b.v2.png").write_bytes(png_bytes(image(60)))
    (root / "sub.dir" / "b.v2.txt").write_text("é in a caption")
    (root / "c.webp").write_bytes(_webp(image(120)))
    (root / "c.txt").write_text("third")
    (root / "no_caption.png").write_bytes(png_bytes(image(1)))
    (root / "broken.jpg").write_bytes(jpeg_bytes(image(2))[:100])
    (root / "broken.txt").write_text("broken")
    (root / "latin1.png").write_bytes(png_bytes(image(3)))
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "anim.gif").write_bytes(b"GIF89a")
    return root


def _webp(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


def read_back(pattern: str) -> dict[str, torch.Tensor]:
    datamodule = WebDatasetDataModule(pattern, val_shards=pattern, batch_size=2, resolution=8, num_workers=0)
    datamodule.setup("validate")
    return {c: img for b in datamodule.val_dataloader() for c, img in zip(b["caption"], b["image"])}


def test_folder_round_trips_with_reasons_for_skips(folder, tmp_path):
    report = folder_to_shards(str(folder), str(tmp_path / "out"), samples_per_shard=2)
    assert report.written == 3 and len(report.shards) == 2
    assert report.skipped == {
        "no caption": 1,
        "undecodable image": 1,
        "caption is not UTF-8": 1,
        "unsupported file type (.gif)": 1,
    }
    assert read_manifest(tmp_path / "out")["splits"]["shard"] == {
        "pattern": "shard-{000000..000001}.tar",
        "count": 3,
        "shards": 2,
    }
    images = read_back(report.pattern)
    assert set(images) == {"a red square", "é in a caption", "third"}
    for caption, value in (("a red square", 10), ("é in a caption", 60), ("third", 120)):
        expected = torch.from_numpy(np.asarray(image(value), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
        torch.testing.assert_close(images[caption], expected)  # lossless formats: exact pixels
    assert "skipped: 4" in report.summary()


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_captions_from_a_table(folder, tmp_path, kind):
    rows = [("a.png", "from table, with comma"), ("sub.dir/b.v2.png", "second"), ("gone.png", "missing file")]
    table = tmp_path / f"captions.{kind}"
    if kind == "csv":
        table.write_text("file,caption\n" + "".join(f'{f},"{c}"\n' for f, c in rows))
    else:
        table.write_text(
            "".join(json.dumps({"file": f, "caption": c}) + "\n" for f, c in rows)
            + '{"file": "x.png"}\n{broken json\n'
        )
    report = folder_to_shards(str(folder), str(tmp_path / "out"), captions_file=str(table))
    assert report.written == 2
    assert report.skipped["image file missing"] == 1
    assert set(read_back(report.pattern)) == {"from table, with comma", "second"}
    if kind == "jsonl":
        assert report.skipped["captions-file row without file and caption"] == 2


def test_bad_inputs_are_explained(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="image folder"):
        folder_to_shards(str(tmp_path / "nope"), str(tmp_path / "out"))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("path,text\na.png,x\n")
    with pytest.raises(ValueError, match="'file' and 'caption'"):
        folder_to_shards(str(folder), str(tmp_path / "out"), captions_file=str(bad_csv))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable images"):
        folder_to_shards(str(tmp_path / "empty"), str(tmp_path / "out"))


def test_script_prints_a_summary(folder, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(
        sys, "argv", ["make_shards.py", str(folder), str(tmp_path / "out"), "--samples-per-shard", "5"]
    )
    with caplog.at_level("INFO"):
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert "written: 3 samples in 1 shards" in caplog.text and "no caption" in caplog.text
    assert (tmp_path / "out" / "shard-000000.tar").is_file()
