"""The table of scripts/bench.py's rows; without torch, so that scripts/gpu_check.sh prints saved rows at once.

    python scripts/bench_table.py outputs/bench/bench.json [more.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def format_table(rows: list[dict]) -> str:
    header = f"{'name':64} {'dev':4} {'dtype':5} {'mode':8} {'ours':>10} {'theirs':>10} {'unit':17} {'ratio':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        theirs = "-" if r["theirs"] is None else f"{r['theirs']:10.4g}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:6.2f}"
        lines.append(f"{r['name']:64} {r['device']:4} {r['dtype']:5} {r['mode']:8} {r['ours']:10.4g} "
                     f"{theirs:>10} {r['unit']:17} {ratio:>6}")  # fmt: skip
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    for path in paths:
        sys.stdout.write(f"{path}\n{format_table(json.loads(Path(path).read_text()))}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
