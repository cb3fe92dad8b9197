"""What one evaluation produces, and how it is named and written."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision

from ldm_train.files import atomic_write

THOUSAND = 1000


def count_label(n: int) -> str:
    """1000 -> "1k", 2500 -> "2.5k", 10000 -> "10k", 200 -> "200": the N in metric keys (`fid@1k`)."""
    if n >= THOUSAND and n % (THOUSAND // 10) == 0:
        return f"{n / THOUSAND:g}k"
    return str(n)


def metric_name(text: str) -> str:
    """A class name as a metric-key part: "T-shirt/top" -> "t-shirt_top" (a "/" would nest in W&B)."""
    return text.lower().replace("/", "_").replace(" ", "_")


@dataclass
class EvaluationResult:
    """Scalars for loggers, the settings and details behind them, and a grid image."""

    metrics: dict[str, float]  # flat, e.g. {"fid@1k": 41.2, "kid@1k": 0.012, "class_accuracy": 0.93}
    details: dict[str, Any]  # N, reference, sampler settings, seeds, per-class table, timings
    grid: torch.Tensor  # 3×H×W in [0, 1]: one row per prompt (phase 2) or inputs over reconstructions
    grid_nrow: int = 8
    samples: torch.Tensor | None = None  # N×3×H×W uint8, only when asked for (evaluate.py writes them)
    prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"metrics": _finite(self.metrics), **_finite(self.details)}

    def write(self, out_dir: str | Path, name: str = "evaluation") -> Path:
        """`<name>.json` and `<name>_grid.png` (or `grid.png` for the default name) into `out_dir`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_json(), indent=2) + "\n"
        atomic_write(out / f"{name}.json", lambda tmp: tmp.write_text(text))
        grid_name = "grid.png" if name == "evaluation" else f"{name}_grid.png"
        atomic_write(out / grid_name, lambda tmp: torchvision.utils.save_image(self.grid, tmp, format="png"))
        return out / f"{name}.json"


def _finite(tree: Any) -> Any:
    """NaN/inf (a class with no samples) -> None, so the JSON is standard."""
    if isinstance(tree, dict):
        return {k: _finite(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_finite(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree
