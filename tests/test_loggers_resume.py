import csv
import os
import time

import pytest
from omegaconf import OmegaConf

from ldm_train import loggers
from ldm_train.lit.csv_logger import ContinuingCSVLogger
from ldm_train.resume import find_unfinished_run
from ldm_train.runs import FINISHED_MARKER


def test_wandb_mode_auto_goes_offline_without_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setattr(loggers, "_reachable", lambda *a: pytest.fail("must not touch the network without a key"))
    assert loggers.resolve_wandb_mode("auto") == "offline"


def test_wandb_mode_auto_goes_offline_when_unreachable(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(loggers, "_reachable", lambda *a: False)
    assert loggers.resolve_wandb_mode("auto") == "offline"
    monkeypatch.setattr(loggers, "_reachable", lambda *a: True)
    assert loggers.resolve_wandb_mode("auto") == "online"


def test_wandb_env_mode_wins(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert loggers.resolve_wandb_mode("online") == "disabled"


def _run(root, day, hms, name, finished=False):
    run = root / day / hms
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    OmegaConf.save(OmegaConf.create({"name": name}), run / "config_resolved.yaml")
    if finished:
        (run / FINISHED_MARKER).touch()
    time.sleep(0.01)
    return run


def test_resume_auto_finds_newest_unfinished_run_of_same_name(tmp_path):
    old = _run(tmp_path, "2026-01-01", "10-00-00", "exp")
    newer = _run(tmp_path, "2026-01-02", "10-00-00", "exp")
    _run(tmp_path, "2026-01-03", "10-00-00", "exp", finished=True)
    _run(tmp_path, "2026-01-04", "10-00-00", "other")
    current = tmp_path / "2026-01-05" / "10-00-00"
    os.utime(old / "checkpoints" / "last.ckpt")  # touched last: still not the newest run
    assert find_unfinished_run(tmp_path, "exp", current) == newer / "checkpoints" / "last.ckpt"
    assert find_unfinished_run(tmp_path, "none", current) is None


def test_a_crash_while_metrics_csv_gains_a_column_keeps_its_rows(tmp_path, monkeypatch):
    logger = ContinuingCSVLogger(str(tmp_path), name="csv", version="")
    for step in range(3):
        logger.log_metrics({"train/loss": float(step)}, step=step)
        logger.save()
    path = tmp_path / "csv" / "metrics.csv"
    before = path.read_text()

    def crash(self, rows):  # the process dies while the file is rewritten with the new header
        raise KeyboardInterrupt

    monkeypatch.setattr(csv.DictWriter, "writerows", crash)
    logger.log_metrics({"train/loss": 3.0, "val/loss": 1.0}, step=3)  # a new column: the file is rewritten
    with pytest.raises(KeyboardInterrupt):
        logger.save()
    assert path.read_text() == before, "the rows already logged were lost"
