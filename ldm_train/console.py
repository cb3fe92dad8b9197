"""Console output: the resolved config as a rich tree at start."""

from __future__ import annotations

import rich
import rich.syntax
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

PRINT_ORDER = ("stage_name", "data", "module", "optim", "trainer", "callbacks", "logger", "paths")


@rank_zero_only
def print_config(cfg: DictConfig) -> None:
    tree = rich.tree.Tree("config", style="dim")
    keys = [k for k in PRINT_ORDER if k in cfg] + [k for k in cfg if k not in PRINT_ORDER]
    for key in keys:
        branch = tree.add(str(key), style="bold")
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else str(node)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
