"""The report of a two-phase run (what `make demo` ends with): `report.md`, `report.json`, `grid.png`
and `curves.png` from the run directories and their evaluations.

Everything in it is read from files the runs wrote: `run_summary.json` (wall-clock, images/s, peak
memory), `csv/metrics.csv` (curves), the final `evaluation.json` of each phase (`scripts/evaluate.py`),
and the commands that made them.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402

from ldm_train.files import atomic_write  # noqa: E402

SMOOTHING = 0.9  # exponential smoothing of the per-step training loss in the curves
CURVES = {  # (phase, title): metric keys drawn against step, one quantity (one scale) per panel
    ("phase 1", "training / validation loss"): ["train/rec", "val/rec_loss"],
    ("phase 1", "PSNR (dB)"): ["val/psnr"],
    ("phase 1", "rFID"): ["val/rfid@"],
    ("phase 2", "training / validation loss"): ["train/loss", "val/loss"],
    ("phase 2", "FID"): ["val/fid@"],
    ("phase 2", "class accuracy"): ["val/class_accuracy"],
}


@dataclass
class PhaseRecord:
    """One phase as the report sees it."""

    name: str  # "phase 1" | "phase 2"
    run_dir: Path
    command: str  # the training command
    evaluation_dir: Path  # where its evaluate.py output lies
    evaluation_command: str

    def summary(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "run_summary.json").read_text())

    def evaluation(self) -> dict[str, Any]:
        return json.loads((self.evaluation_dir / "evaluation.json").read_text())

    def in_loop_seconds(self) -> float:
        return sum(json.loads(p.read_text()).get("seconds", 0.0) for p in (self.run_dir / "evaluation").glob("step*.json"))


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open() as file:
        return list(csv.DictReader(file))


def series(rows: list[dict[str, str]], key_prefix: str) -> tuple[str, list[int], list[float]] | None:
    """(key, steps, values) of the first column starting with `key_prefix` (`val/fid@` matches `val/fid@200`)."""
    keys = [k for k in (rows[0].keys() if rows else []) if k == key_prefix or (key_prefix.endswith("@") and k.startswith(key_prefix))]
    if not keys:
        return None
    key = keys[0]
    points = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return (key, [s for s, _ in points], [v for _, v in points]) if points else None


def _smooth(values: list[float]) -> list[float]:
    out, average = [], None
    for value in values:
        average = value if average is None else SMOOTHING * average + (1 - SMOOTHING) * value
        out.append(average)
    return out


def draw_curves(phases: list[PhaseRecord], path: Path) -> Path:
    """One panel per (phase, quantity): losses and in-loop metrics against the optimizer step."""
    rows = {p.name: read_rows(p.run_dir) for p in phases}
    panels = [(phase, title, keys) for (phase, title), keys in CURVES.items() if phase in rows]
    columns = -(-len(panels) // 2)
    figure, axes = plt.subplots(2, columns, figsize=(4.2 * columns, 6.8), squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    for axis, (phase, title, keys) in zip(axes.flat, panels):
        for key in keys:
            found = series(rows[phase], key)
            if found is None:
                continue
            name, steps, values = found
            training = name.startswith("train/")
            axis.plot(steps, _smooth(values) if training else values, marker=None if training else "o",
                      label=name + (" (smoothed)" if training else ""))
        axis.set(title=f"{phase}: {title}", xlabel="step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)
    return path


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def build_report(phases: list[PhaseRecord], out_dir: Path, header: dict[str, Any]) -> dict[str, Any]:
    """Write report.md, report.json, grid.png (phase 2's, else phase 1's) and curves.png into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"header": header, "phases": {}}
    lines = [f"# {header.get('title', 'Report')}", ""]
    lines += [f"- {key}: {value}" for key, value in header.items() if key != "title"]
    for phase in phases:
        summary, evaluation = phase.summary(), phase.evaluation()
        in_loop = phase.in_loop_seconds()
        training_seconds = max(summary["seconds"] - in_loop, 1e-9)
        record = {
            "run_dir": str(phase.run_dir), "command": phase.command, "evaluation_command": phase.evaluation_command,
            "steps": summary["step"], "wall_clock_s": summary["seconds"], "in_loop_evaluation_s": in_loop,
            "images_per_s": summary["images"] / training_seconds, "peak_rss_mib": summary["peak_rss_mib"],
            "peak_child_rss_mib": summary["peak_child_rss_mib"], "peak_accelerator_mib": summary["peak_accelerator_mib"],
            "device": summary["device"], "evaluation": evaluation,
        }
        data["phases"][phase.name] = record
        lines += ["", f"## {phase.name.capitalize()}", "", f"Run: `{phase.run_dir}`", "",
                  "| training | value |", "|---|---|",
                  f"| optimizer steps | {summary['step']} |",
                  f"| wall-clock (incl. {_minutes(in_loop)} of in-loop evaluation) | {_minutes(summary['seconds'])} |",
                  f"| images/s (training only) | {record['images_per_s']:.1f} |",
                  f"| peak memory (RSS; largest data worker) | {summary['peak_rss_mib']:.0f} MiB; "
                  f"{summary['peak_child_rss_mib']:.0f} MiB |"]
        if summary["peak_accelerator_mib"] is not None:
            lines.append(f"| peak accelerator memory | {summary['peak_accelerator_mib']:.0f} MiB |")
        metrics = evaluation["metrics"]
        lines += ["", f"Evaluation: {evaluation['n']} {'samples' if 'samples_per_s' in evaluation else 'held-out images'}"
                  f" against {evaluation['reference']} (Inception 2015-12-05 features)"
                  + (f"; {evaluation['sampler']}, {evaluation['steps']} steps, guidance {evaluation['guidance']:g}, "
                     f"seeds {evaluation['seeds']['first']}…{evaluation['seeds']['first'] + evaluation['seeds']['count'] - 1}"
                     if "sampler" in evaluation else ""), "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {_fmt(value)} |" for name, value in metrics.items() if "/" not in name]
        if "samples_per_s" in evaluation:
            lines.append(f"| sampling throughput | {evaluation['samples_per_s']:.2f} samples/s |")
        if "per_class_accuracy" in evaluation:
            lines += ["", "| class | accuracy |", "|---|---|"]
            lines += [f"| {name} | {_fmt(value, 3)} |" for name, value in evaluation["per_class_accuracy"].items()]
        lines += ["", "Reproduce:", "", "```bash", phase.command, phase.evaluation_command, "```"]
    grid_source = phases[-1].evaluation_dir / "grid.png"
    shutil.copyfile(grid_source, out_dir / "grid.png")
    draw_curves(phases, out_dir / "curves.png")
    lines += ["", "## Files", "", "- `grid.png`: " + ("one row per class prompt" if len(phases) > 1 else "inputs over reconstructions"),
              "- `curves.png`: training and validation loss, in-loop metrics against step", ""]
    text = "\n".join(lines)
    atomic_write(out_dir / "report.md", lambda tmp: tmp.write_text(text))
    blob = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write(out_dir / "report.json", lambda tmp: tmp.write_text(blob))
    return data
