"""Evaluate a phase-1 or phase-2 run: see ldm_train/evaluate_cli.py for the arguments."""

from ldm_train.evaluate_cli import main

if __name__ == "__main__":
    main()
