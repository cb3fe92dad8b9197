"""Post-hoc EMA reconstruction (EDM2) from a run's snapshots: see ldm_train/posthoc_ema_cli.py for the arguments."""

from ldm_train.posthoc_ema_cli import main

if __name__ == "__main__":
    main()
