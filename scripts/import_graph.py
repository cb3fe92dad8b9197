"""The package-level import graph of ldm_train in a source tree: which subpackage or top-level module imports
which, and every edge that goes up the layers of tests/test_layers.py or lies on an import cycle.

    python scripts/import_graph.py [SOURCE_TREE]    (default: this repository)

SOURCE_TREE is the folder holding ldm_train/, e.g. an older commit's `git archive <commit> | tar -x -C DIR`.
Units the layer map does not know (modules renamed since) are listed, and their edges are not judged.
Stdlib only; the import reading and the layer map are tests/test_layers.py's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests/ holds the layer map

from tests.test_layers import (  # noqa: E402
    LAYERS,
    cycles,
    describe,
    import_graph,
    layer_index,
    unit_graph,
    unit_of,
    upward_imports,
)


def report(root: Path) -> str:
    """The graph of the package under `root`, as text."""
    graph = import_graph(root)
    units = unit_graph(graph)
    level = layer_index(LAYERS)
    loops = cycles(units)
    on_loop = {unit: loop for loop in loops for unit in loop}
    lines = [f"ldm_train under {root}: {len(graph)} modules, {len(units)} units",
             "layers, bottom to top: " + " → ".join(", ".join(names) for _, names in LAYERS), ""]
    for unit in sorted(units, key=lambda u: (level.get(u, len(LAYERS)), u)):
        where = f"layer {level[unit]}" if unit in level else "no layer"
        lines.append(f"{unit:<16} [{where}] -> {', '.join(sorted(units[unit], key=lambda u: (level.get(u, 0), u)))}")
    upward = upward_imports(graph, LAYERS)
    lines += ["", f"upward imports: {len(upward)}"] + [f"  {describe(a, b, LAYERS)}" for a, b in upward]
    lines += [f"unit cycles: {len(loops)}"] + [f"  {' ↔ '.join(loop)}" for loop in loops]
    for loop in loops:  # the module imports that close each cycle
        lines += [f"    {module} imports {other}" for module in sorted(graph) for other in sorted(graph[module])
                  if unit_of(module) in loop and unit_of(other) in loop and unit_of(module) != unit_of(other)
                  and on_loop.get(unit_of(other)) is loop]
    module_loops = cycles(graph)
    lines += [f"module cycles: {len(module_loops)}"] + [f"  {' ↔ '.join(loop)}" for loop in module_loops]
    unknown = sorted(set(units) - set(level))
    lines.append(f"units without a layer: {', '.join(unknown) or 'none'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_tree", nargs="?", type=Path, default=REPO, help="the folder holding ldm_train/")
    print(report(parser.parse_args().source_tree.resolve()))


if __name__ == "__main__":
    main()
