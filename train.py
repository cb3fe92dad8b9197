"""Entry point: ``python train.py stage=autoencoder`` / ``python train.py stage=ldm``.

All logic lives in :mod:`ldm_train.train`; this file only exists so the command stays short.
"""

from ldm_train.train import main

if __name__ == "__main__":
    main()
