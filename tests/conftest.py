"""Test-wide settings: no network, no W&B account, a throw-away torch cache; scripts imported as modules."""

import importlib.util
import os
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

# Set before anything imports transformers / huggingface_hub / wandb.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("TORCH_HOME", tempfile.mkdtemp(prefix="ldm_train_torch_home_"))
os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="ldm_train_wandb_"))
os.environ["TOKENIZERS_PARALLELISM"] = "false"

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture
def load_script():
    """Import scripts/<name>.py as a module, so a test can call its main(argv)."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
