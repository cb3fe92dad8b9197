"""`python -m ldm_train ...`: the same as the `ldm-train` command (training, or `evaluate` / `sample`)."""

from ldm_train.cli import main

if __name__ == "__main__":
    main()
