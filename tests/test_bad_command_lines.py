"""Every bad command line fails before anything is built, naming the key, the value and the fix.

Most cases go through train.py's checks in-process (command line → Hydra → validate_config) with
constructors of networks, data modules and Trainers counted; a handful run `python train.py` as a
user would and are timed. scripts/report_bad_command_lines.py prints the summary figures.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

from tests.bad_command_lines import CASES, LDM, BuildCounter, Case, check_in_process, warm_up, write_export
from tests.helpers import run_train

HAS_GPU = torch.cuda.is_available()
# What building prints or leaves behind: Lightning's model summary, the data preparation's folder.
BUILD_MARKERS = re.compile(r"Total params|\| Name\s+\| Type|Trainable params")
# A failed `python train.py`: start-up (torch + Lightning imports) and checks, on a loaded 2-core CPU;
# building the models and preparing Fashion-MNIST takes longer than this before the first step.
SUBPROCESS_LIMIT_S = 60
SUBPROCESS_CASES = ["root_added", "z_channels_zero", "pixel_loss", "batch_zero", "shards_unquoted",
                    "unet_context", "ddp_no_gpu"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad_command_lines")
    write_export(path)
    warm_up(path)
    return path


def test_there_are_enough_cases_across_both_stages():
    ldm = [c for c in CASES if "stage=ldm" in c.args]
    assert len(CASES) >= 60 and len(ldm) >= 20 and len(CASES) - len(ldm) >= 20
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("args", [[], LDM, [*LDM, "unet=tiny"], ["experiment=fashion_mnist"],
                                  [*LDM, "experiment=fashion_mnist"], ["+extra.note=baseline"],
                                  ["data=webdataset", "data.train_shards=/x.tar", "data.resolution=32"]])
def test_the_base_command_lines_pass(args, root):
    if "data=webdataset" in args:
        (root / "x.tar").write_bytes(b"")
        args = [a.replace("/x.tar", str(root / "x.tar")) for a in args]
    assert check_in_process(list(args), root) is None


@pytest.mark.parametrize("bad", CASES, ids=lambda c: c.id)
def test_bad_command_line_fails_at_composition(bad: Case, root: Path):
    if bad.gpu_free and HAS_GPU:
        pytest.skip("this machine has the hardware the case asks for")
    counter = BuildCounter().install()
    try:
        message = check_in_process(list(bad.args), root)
    finally:
        counter.remove()
    assert message is not None, f"accepted: {' '.join(bad.args)}"
    missing = [word for word in bad.expected if word not in message]
    assert not missing, f"{missing} not in the message:\n{message}"
    assert not counter.built, f"built before failing: {counter.built}"


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_train_py_fails_fast_naming_the_problem(name: str, tmp_path: Path):
    bad = next(c for c in CASES if c.name == name)
    if bad.gpu_free and HAS_GPU:
        pytest.skip("this machine has the hardware the case asks for")
    write_export(tmp_path)
    start = time.perf_counter()
    result = run_train(list(bad.args), tmp_path, timeout=SUBPROCESS_LIMIT_S * 2)
    elapsed = time.perf_counter() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0
    missing = [word for word in bad.expected if word not in output]
    assert not missing, f"{missing} not in the output:\n{output[-3000:]}"
    assert not BUILD_MARKERS.search(output), "a model summary was printed: the run got past building"
    assert not (tmp_path / "data").exists(), "failed after data preparation had started"
    assert elapsed < SUBPROCESS_LIMIT_S, f"took {elapsed:.1f} s to fail"
