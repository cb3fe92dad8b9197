"""Test-wide settings: no network, no W&B account, a throw-away torch cache."""

import os
import tempfile

# Set before anything imports transformers / huggingface_hub / wandb.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("TORCH_HOME", tempfile.mkdtemp(prefix="ldm_train_torch_home_"))
os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="ldm_train_wandb_"))
os.environ["TOKENIZERS_PARALLELISM"] = "false"
