"""Entry point: ``python train.py stage=autoencoder`` / ``python train.py stage=ldm``.

The same command as `ldm-train` and `python -m ldm_train` (ldm_train/cli.py); all logic lives in
:mod:`ldm_train.train`. This file only exists so the command stays short in a source checkout.
"""

import sys

from ldm_train.cli import train

if __name__ == "__main__":
    train(sys.argv[1:])
