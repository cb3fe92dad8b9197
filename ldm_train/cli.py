"""The commands: `ldm-train` = `python -m ldm_train` = `python train.py` (training by default; `evaluate` and
`sample` as subcommands), and `ldm-sample` = `python -m ldm_train.sample` = `python scripts/sample.py`.

    ldm-train stage=autoencoder ...            # = python train.py ...
    ldm-train evaluate ckpt=latest n=1000      # = python scripts/evaluate.py ...
    ldm-train sample ckpt=latest prompt="..."  # = ldm-sample ... = python scripts/sample.py ...
"""

from __future__ import annotations

import importlib
import sys

from ldm_train.command_line import exit_on_bad_command_line, run_reporting_composition_errors

SUBCOMMANDS = {"evaluate": "ldm_train.evaluate_cli", "sample": "ldm_train.sample"}


def train(args: list[str]) -> None:
    """Training with Hydra's overrides `args` (Hydra reads them from sys.argv): the command line's own
    mistakes (grammar, a key twice) fail before torch is imported."""
    exit_on_bad_command_line(args)
    from ldm_train.train import main

    run_reporting_composition_errors(main, args)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[sys.argv.pop(1)])
        module.main()
        return
    train(sys.argv[1:])
