"""The `ldm-train` command: training by default, `evaluate` and `sample` as subcommands.

    ldm-train stage=autoencoder ...            # = python train.py ...
    ldm-train evaluate ckpt=latest n=1000      # = python scripts/evaluate.py ...
    ldm-train sample ckpt=latest prompt="..."  # = python scripts/sample.py ...
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {"evaluate": "ldm_train.evaluate_cli", "sample": "ldm_train.sample_cli"}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[sys.argv.pop(1)])
        module.main()
        return
    from ldm_train.train import main as train  # Hydra reads the overrides from sys.argv

    train()
