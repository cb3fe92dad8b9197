"""Sample images from a phase-2 model: see ldm_train/sample.py for the arguments."""

from ldm_train.sample import main

if __name__ == "__main__":
    main()
