"""README "Layout": every package and top-level module of ldm_train/ is listed, nothing listed is missing, and
the list is the layering: its lines follow the layers of tests/test_layers.py, and a module imports only from
modules listed on its own line or above it."""

from __future__ import annotations

import ast
import re

from tests.helpers import REPO
from tests.test_layers import LAYERS, layer_index

PACKAGE = REPO / "ldm_train"
# A first line of an entry: paths (the first with its folder, the rest relative to it) then the description.
ENTRY = re.compile(r"^(?P<paths>[^\s,]+(?:, [^\s,]+)*)(?:\s+.*)?$")
NOT_CODE = {"__pycache__", "configs"}  # folders that hold no importable modules


def layout_block() -> str:
    """The code block of the README's "Layout" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Layout\n"):]
    block = section[section.index("```\n") + 4:]
    return block[: block.index("```\n")]


def layout_lines() -> list[list[str]]:
    """The README's Layout block as entries (lists of repository paths), in order; continuation lines skipped."""
    entries = []
    for line in layout_block().splitlines():
        if not line.strip() or line[0].isspace():
            continue
        first, *rest = ENTRY.match(line)["paths"].split(", ")
        folder = first[: first.rindex("/") + 1] if rest else ""
        entries.append([first, *(folder + name for name in rest)])
    return entries


def unit_of(path: str) -> str | None:
    """'ldm_train/nn/' or 'ldm_train/files.py' -> 'nn' / 'files'; other paths (scripts/, train.py) -> None."""
    if not path.startswith("ldm_train/"):
        return None
    name = path.removeprefix("ldm_train/").rstrip("/")
    return name.removesuffix(".py")


def package_tree() -> set[str]:
    folders = {f"ldm_train/{p.name}/" for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    modules = {f"ldm_train/{p.name}" for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    return folders | modules


def imported_units(unit: str) -> set[str]:
    """The top-level units of ldm_train that `unit` (a package or module) imports, anywhere in its code."""
    path = PACKAGE / unit
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    found = set()
    for file in files:
        package = file.relative_to(REPO).with_suffix("").parts[:-1]
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
                module = ".".join(part for part in (base, node.module) if part)
                names = [module] + ([f"{module}.{a.name}" for a in node.names] if module == "ldm_train" else [])
            else:
                continue
            found |= {name.split(".")[1] for name in names if name.startswith("ldm_train.")}
    return found - {unit}


def test_layout_lists_every_package_and_module_and_nothing_else():
    listed = [path for entry in layout_lines() for path in entry]
    assert len(listed) == len(set(listed)), "a path is listed twice"
    in_package = {p for p in listed if p.startswith("ldm_train/")}
    tree = package_tree()
    assert not tree - in_package, f"not in the README's Layout: {sorted(tree - in_package)}"
    assert not in_package - tree, f"in the README's Layout but not in ldm_train/: {sorted(in_package - tree)}"
    for path in set(listed) - in_package:
        assert (REPO / path).exists(), path


def test_scripts_line_names_every_script():
    block = layout_block()
    scripts = block[block.index("\nscripts/"):]
    named = set(re.findall(r"\w+", scripts.replace("scripts/", "")))
    assert {p.stem for p in (REPO / "scripts").glob("*.py")} <= named


def test_no_module_imports_from_a_line_below_its_own():
    allowed: set[str] = set()
    problems = []
    for entry in layout_lines():
        units = {u for u in map(unit_of, entry) if u is not None and u not in NOT_CODE}
        allowed |= units
        for unit in sorted(units):
            above = imported_units(unit) - allowed
            if above:
                problems.append(f"{unit} imports {sorted(above)}, listed below it")
    assert not problems, "\n".join(problems)


def test_lines_follow_the_layers_bottom_to_top():
    level = layer_index(LAYERS)
    seen = []  # (line's first path, its layer)
    for entry in layout_lines():
        units = {u for u in map(unit_of, entry) if u is not None and u not in NOT_CODE}
        layers = {level[u] for u in units}
        assert len(layers) <= 1, f"{entry} spans layers {sorted(layers)}: one line, one layer"
        seen += [(entry[0], layer) for layer in layers]
    out_of_order = [(a, b) for (a, low), (b, high) in zip(seen, seen[1:]) if high < low]
    assert not out_of_order, f"listed above a lower layer's line: {out_of_order}"
