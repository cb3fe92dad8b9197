"""Entry point: ``python train.py stage=autoencoder`` / ``python train.py stage=ldm``.

All logic lives in :mod:`ldm_train.train`; this file only exists so the command stays short.
"""

import sys

from ldm_train.command_line import exit_on_bad_command_line, run_reporting_composition_errors

if __name__ == "__main__":
    # The command line's own mistakes (grammar, a key twice) fail before torch is imported.
    exit_on_bad_command_line(sys.argv[1:])
    from ldm_train.train import main

    run_reporting_composition_errors(main, sys.argv[1:])
