"""ldm_train/files.py, the one atomic-write module: whole files and folders or nothing, overwrite rules; the
one reader of user-given weights (read_state_dict)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ldm_train import files


def test_save_safetensors_atomic_replaces_unless_told_not_to(tmp_path):
    path = tmp_path / "sub" / "w.safetensors"
    files.save_safetensors_atomic({"a": torch.ones(2)}, path, {"k": "v"})
    files.save_safetensors_atomic({"a": torch.zeros(2)}, path)  # default: replace (checkpoints, caches)
    assert torch.equal(load_file(path)["a"], torch.zeros(2))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        files.save_safetensors_atomic({"a": torch.ones(2)}, path, overwrite=False)  # user-named exports
    assert torch.equal(load_file(path)["a"], torch.zeros(2))
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.safetensors"]  # no temporary file left
    assert path.stat().st_mode & 0o777 == files.FILE_MODE


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    path = files.atomic_write(tmp_path / "x.json", lambda tmp: tmp.write_text("old"))

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(path, fail)
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


def test_publish_folder_appears_whole_and_replaces_only_with_overwrite(tmp_path):
    out = tmp_path / "export"
    files.publish_folder(lambda d: (d / "a.txt").write_text("1"), out)
    with pytest.raises(FileExistsError):
        files.publish_folder(lambda d: (d / "a.txt").write_text("2"), out)
    with pytest.raises(RuntimeError):
        files.publish_folder(lambda d: (_ for _ in ()).throw(RuntimeError("boom")), out, overwrite=True)
    assert (out / "a.txt").read_text() == "1"
    files.publish_folder(lambda d: (d / "b.txt").write_text("2"), out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["b.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert out.stat().st_mode & 0o777 == files.DIR_MODE


def test_read_state_dict_unwraps_checkpoints_and_refuses_code_and_unknown_files(tmp_path):
    weights = {"w": torch.arange(3.0)}
    files.save_safetensors_atomic(weights, tmp_path / "a.safetensors")
    torch.save({"state_dict": weights, "global_step": 7}, tmp_path / "b.ckpt")  # Lightning / SD .ckpt
    torch.save(weights, tmp_path / "c.bin")  # diffusers' pickled weights
    for name in ("a.safetensors", "b.ckpt", "c.bin"):
        state = files.read_state_dict(tmp_path / name)
        assert state.keys() == {"w"} and torch.equal(state["w"], weights["w"])
    torch.save({"state_dict": weights, "hook": Path("x")}, tmp_path / "code.ckpt")  # pickles a class
    with pytest.raises(ValueError, match="weights_only=True"):
        files.read_state_dict(tmp_path / "code.ckpt")
    torch.save({"w": [1, 2]}, tmp_path / "lists.pt")
    with pytest.raises(ValueError, match="does not hold a state_dict"):
        files.read_state_dict(tmp_path / "lists.pt")
    with pytest.raises(ValueError, match="unknown checkpoint type '.npz'"):
        files.read_state_dict(tmp_path / "d.npz")
