"""A built wheel is the whole package: configs and the classifier weights inside it, and `ldm-train`
installed from it composes a run outside the source tree. Offline: the wheel is built without build
isolation and installed without dependencies into a fresh venv that sees this venv's packages."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow
PACKAGE = REPO / "ldm_train"


def run(command: list, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of what the wheel is made of: setuptools writes build/ and *.egg-info next to its sources.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(PACKAGE, source / "ldm_train", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", out,
         source], cwd=out)
    (built,) = out.glob("ldm_train-*.whl")
    return built


def test_the_wheel_holds_every_config_and_the_classifier_weights(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {str(p.relative_to(REPO)) for p in (PACKAGE / "configs").rglob("*.yaml")}
    assert len(configs) > 40 and configs <= names, sorted(configs - names)
    weights = {str(p.relative_to(REPO)) for p in (PACKAGE / "metrics" / "weights").glob("*.safetensors")}
    assert weights and weights <= names
    assert "ldm_train/cli.py" in names and not any(n.startswith(("tests/", "scripts/")) for n in names)


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (no dependencies); this venv's site-packages are on its path
    through a .pth line (so the editable install's own .pth, which would point at the sources, is not read)."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", root / "venv"], cwd=root)
    python = root / "venv" / "bin" / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root).stdout.strip())
    (purelib / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], cwd=root)
    return root / "venv"


def test_installed_ldm_train_composes_outside_the_source_tree(venv: Path, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = run([venv / "bin" / "python", "-c", "import ldm_train; print(ldm_train.__file__)"], tmp_path, env).stdout
    assert where.startswith(str(venv)), f"ldm_train imported from {where}, not from the installed wheel"
    result = run([venv / "bin" / "ldm-train", "stage=autoencoder", "--cfg", "job"], tmp_path, env)
    assert "stage_name: autoencoder" in result.stdout and "_target_: ldm_train.lit.autoencoder.AutoencoderModule" in result.stdout
    result = run([venv / "bin" / "python", "-m", "ldm_train", "stage=ldm", "text_encoder=minilm", "--cfg", "job"],
                 tmp_path, env)
    assert "stage_name: ldm" in result.stdout
