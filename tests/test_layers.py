"""The layering of ldm_train, declared once (LAYERS, bottom to top) and checked on every module's imports:
no module imports from a layer above its own, and no imports form a cycle, between modules or between the
package's units (subpackages and top-level modules). Imports are read with `ast` wherever they stand
(function-local ones included; relative ones resolved), so the check needs no import of the package.

Stdlib only: `scripts/import_graph.py` prints the same graph, with this layer map, for any source tree."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "ldm_train"
ROOT_UNIT = "__init__"  # the package's own __init__.py
NOT_CODE = {"__pycache__", "configs"}  # folders of the package that hold no modules

# Bottom to top: (name, units). A unit is a subpackage or a top-level module of ldm_train; it imports only
# from its own layer (without a cycle) and the layers below. The order is the code's, not a wish list.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundations", (ROOT_UNIT, "constraints", "files", "assets", "runs", "speed")),
    ("blocks", ("nn",)),
    ("networks and diffusion math", ("autoencoder", "unet", "conditioning", "diffusion")),
    ("sampling", ("sampling",)),
    ("the Python API", ("text_to_image",)),
    ("data", ("data",)),
    ("metrics", ("metrics",)),
    ("evaluation", ("evaluation",)),
    ("interop", ("interop",)),
    ("training", ("lit",)),
    ("run setup", ("command_line", "config_types", "config_check", "config_rules", "console", "loggers",
                   "distributed", "resume")),
    ("commands", ("train", "sample", "evaluate_cli", "posthoc_ema_cli", "report")),
    ("the command line", ("cli", "__main__")),
)

# Imports from a layer above that stay, as (importing module, imported module): reason. Keep it empty:
# move the code to the lower layer or pass the object in instead.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}

# Module names that repeat, each the same role in sibling packages (anything else repeated is one name for two
# things, or two copies of one mechanism): name -> the packages that hold it.
MIRRORS: dict[str, set[str]] = {
    "layouts": {"autoencoder", "unet"},  # parameter names and configs: ours <-> diffusers / SD
    "pretrained": {"autoencoder", "unet"},  # build or fill the network from weights on disk
    "reconstruction": {"metrics", "evaluation"},  # the per-image scores / the phase-1 evaluator running them
    "text_encoder": {"conditioning", "interop"},  # the frozen encoder / the same encoder as a diffusers or SD part
}

Graph = dict[str, set[str]]


def module_files(root: Path) -> dict[str, Path]:
    """Every module of the package under `root` (the folder holding ldm_train/): dotted name -> file."""
    modules = {}
    for file in sorted((root / PACKAGE).rglob("*.py")):
        parts = file.relative_to(root).with_suffix("").parts
        if NOT_CODE & set(parts):
            continue
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return modules


def _known(name: str, modules: Mapping[str, Path]) -> str:
    """The deepest module of the package that `name` (a module, or a name inside one) lies in."""
    while name not in modules:
        name = name.rpartition(".")[0]
    return name


def imports_of(module: str, file: Path, modules: Mapping[str, Path]) -> set[str]:
    """The modules of the package that `module` imports anywhere in its code. `from X import y` counts as an
    import of the submodule X.y when there is one, else of X."""
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level > len(parts):
                    raise ValueError(f"{file}:{node.lineno}: relative import beyond the top-level package")
                base = ".".join(parts[: len(parts) - node.level + 1])
            else:
                base = ""
            source = ".".join(part for part in (base, node.module) if part)
            names = [f"{source}.{alias.name}" for alias in node.names]
            names = [name if name in modules else source for name in names]
        else:
            continue
        found |= {_known(name, modules) for name in names if name.split(".")[0] == PACKAGE}
    return found - {module}


def import_graph(root: Path) -> Graph:
    """Module -> the package's modules it imports, for the package under `root`."""
    modules = module_files(root)
    return {module: imports_of(module, file, modules) for module, file in modules.items()}


def unit_of(module: str) -> str:
    """'ldm_train.lit.ema' -> 'lit'; 'ldm_train.runs' -> 'runs'; 'ldm_train' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT_UNIT


def unit_graph(graph: Mapping[str, Iterable[str]]) -> Graph:
    """The graph between units: unit -> the other units its modules import."""
    units: Graph = {}
    for module, imported in graph.items():
        edges = units.setdefault(unit_of(module), set())
        edges |= {unit_of(other) for other in imported} - {unit_of(module)}
    return units


def layer_index(layers: Sequence[tuple[str, Sequence[str]]]) -> dict[str, int]:
    """unit -> its layer's position, bottom = 0."""
    return {unit: level for level, (_, units) in enumerate(layers) for unit in units}


def upward_imports(graph: Mapping[str, Iterable[str]], layers: Sequence[tuple[str, Sequence[str]]]
                   ) -> list[tuple[str, str]]:
    """(importing module, imported module) for each import from a layer above (units without a layer: not judged)."""
    level = layer_index(layers)
    found = []
    for module in sorted(graph):
        for other in sorted(graph[module]):
            low, high = level.get(unit_of(module)), level.get(unit_of(other))
            if low is not None and high is not None and high > low:
                found.append((module, other))
    return found


def describe(module: str, other: str, layers: Sequence[tuple[str, Sequence[str]]]) -> str:
    """'<module> (layer i, <name>) imports <other> (layer j, <name>)'."""
    level = layer_index(layers)
    low, high = level[unit_of(module)], level[unit_of(other)]
    return f"{module} (layer {low}, {layers[low][0]}) imports {other} (layer {high}, {layers[high][0]})"


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan 1972), each sorted: the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = stack[stack.index(node):]
            del stack[stack.index(node):]
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_every_unit_is_in_exactly_one_layer():
    declared = [unit for _, units in LAYERS for unit in units]
    assert len(declared) == len(set(declared)), "a unit is in two layers"
    in_tree = {unit_of(module) for module in module_files(REPO)}
    assert in_tree == set(declared), (
        f"not in LAYERS: {sorted(in_tree - set(declared))}; in LAYERS but not in ldm_train/: "
        f"{sorted(set(declared) - in_tree)}"
    )


def test_no_module_imports_from_a_layer_above_its_own():
    upward = upward_imports(import_graph(REPO), LAYERS)
    problems = [describe(module, other, LAYERS) for module, other in upward if (module, other) not in ALLOWED_UPWARD]
    assert not problems, "imports from a layer above:\n" + "\n".join(problems)
    assert not set(ALLOWED_UPWARD) - set(upward), "an allowed upward import is gone: remove it from ALLOWED_UPWARD"


def test_a_module_name_repeats_only_as_a_declared_mirror():
    holders: dict[str, set[str]] = {}  # module name -> the packages holding a module of that name
    for module, file in module_files(REPO).items():
        if file.name != "__init__.py":
            package, _, name = module.rpartition(".")
            holders.setdefault(name, set()).add(package.rpartition(".")[2])
    assert {name: found for name, found in holders.items() if len(found) > 1} == MIRRORS


def test_no_import_cycles_between_modules():
    assert cycles(import_graph(REPO)) == []


def test_no_import_cycles_between_subpackages_and_top_level_modules():
    assert cycles(unit_graph(import_graph(REPO))) == []


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_imports_are_read_at_any_depth_and_relative_ones_resolved(tmp_path):
    _write(tmp_path, {
        "ldm_train/__init__.py": "",
        "ldm_train/configs/hook.py": "import ldm_train.top\n",  # not a module of the package
        "ldm_train/files.py": "import os\n",
        "ldm_train/nn/__init__.py": "from .blocks import Block\n",
        "ldm_train/nn/blocks.py": "Block = 1\n",
        "ldm_train/nn/extra.py": "from . import blocks\nfrom .. import files\n",
        "ldm_train/top.py": ("import torch\nimport ldm_train.nn.blocks as b\n\n"
                             "def late():\n    from ldm_train.nn import Block, extra\n    import ldm_train\n"),
    })
    assert import_graph(tmp_path) == {
        "ldm_train": set(),
        "ldm_train.files": set(),
        "ldm_train.nn": {"ldm_train.nn.blocks"},
        "ldm_train.nn.blocks": set(),
        "ldm_train.nn.extra": {"ldm_train.nn.blocks", "ldm_train.files"},
        "ldm_train.top": {"ldm_train.nn.blocks", "ldm_train.nn", "ldm_train.nn.extra", "ldm_train"},
    }
    assert unit_graph(import_graph(tmp_path)) == {
        ROOT_UNIT: set(), "files": set(), "nn": {"files"}, "top": {"nn", ROOT_UNIT},
    }


def test_an_upward_import_is_named_with_both_modules_and_layers():
    layers = (("base", ("files",)), ("blocks", ("nn",)))
    graph = {"ldm_train.files": {"ldm_train.nn.blocks"}, "ldm_train.nn.blocks": {"ldm_train.files"}}
    assert upward_imports(graph, layers) == [("ldm_train.files", "ldm_train.nn.blocks")]
    assert describe("ldm_train.files", "ldm_train.nn.blocks", layers) == (
        "ldm_train.files (layer 0, base) imports ldm_train.nn.blocks (layer 1, blocks)"
    )
    assert cycles(unit_graph(graph)) == [["files", "nn"]]


def test_cycles_are_found_and_a_chain_is_not_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
