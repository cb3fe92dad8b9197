"""The command line, read before Hydra and before torch is imported: an override Hydra's grammar
cannot read, a key given twice (what bash makes of an unquoted `{000..009}` brace pattern) or a
flag Hydra does not have fails at once, naming the override and the fix. Errors Hydra raises while
composing are shown with their cause (the key and the override), not only Hydra's hint to set
HYDRA_FULL_ERROR.
"""

from __future__ import annotations

import os
import re
import sys
from collections import defaultdict
from collections.abc import Callable

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

# Hydra's own flags that take a value (`--cfg job`), so the value is not read as an override.
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                    "--config-dir", "-cd", "--experimental-rerun"}
DRY_RUN_FLAGS = {"--dry-run", "--dry_run", "--check"}
BAD_COMMAND_LINE = 2  # exit status, as argparse uses for a bad command line


def overrides_of(args: list[str]) -> list[str]:
    """The `key=value` arguments of a train.py command line (Hydra's flags left out)."""
    found, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in FLAGS_WITH_VALUE
        else:
            found.append(arg)
    return found


def command_line_problems(args: list[str]) -> list[str]:
    problems = [f"`{a}`: Hydra's command line has no such flag; use check=only (print the config and the "
                "check's result, build nothing)" for a in args if a in DRY_RUN_FLAGS]
    parser = OverridesParser.create()
    keys: dict[str, list[str]] = defaultdict(list)
    for override in overrides_of(args):
        try:
            parsed = parser.parse_override(override)
        except HydraException as err:
            problems.append(_grammar_problem(override, err))
            continue
        keys[parsed.key_or_group].append(override)
    for key, given in keys.items():
        if len(set(given)) > 1:
            problems.append(
                f"{key} is given {len(given)} times ({', '.join(given[:3])}{', ...' if len(given) > 3 else ''}); "
                f"only the last would count. If the shell expanded a brace pattern, quote it for Hydra inside "
                f"the shell's quotes: '{key}=\"/path/shard-{{000..009}}.tar\"'"
            )
    return problems


def _grammar_problem(override: str, err: Exception) -> str:
    reason = str(err).strip().splitlines()
    reason = next((line for line in reason if line and not line.startswith("See ")), "unreadable")
    key, _, value = override.partition("=")
    if re.search(r"[{}]", value.replace("${", "")):
        fix = (f"Hydra reads {{ }} as syntax: quote the value for Hydra inside the shell's quotes, "
               f"'{key}=\"{value}\"'")
    else:
        fix = "write key=value, +key=value (add a key) or ~key (remove one); quote values with spaces or , [ ] { }"
    return f"`{override}`: Hydra cannot read this override ({reason}). Fix: {fix}"


def exit_on_bad_command_line(args: list[str]) -> None:
    problems = command_line_problems(args)
    if problems:
        print("train.py: bad command line:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        raise SystemExit(BAD_COMMAND_LINE)


def explain_composition_error(err: BaseException, args: list[str]) -> str:
    """The causes of an error Hydra raised while composing, with the override that caused it."""
    lines = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(line.strip() for line in str(current).splitlines() if line.strip())
        if text and text not in lines:
            lines.append(text)
        current = current.__cause__ or current.__context__
    causes = " <- ".join(lines) or type(err).__name__
    missing = re.findall(r"Interpolation key '([^']+)' not found", causes)
    culprits = [o for o in overrides_of(args) if any("${" + key in o for key in missing)]
    if culprits:
        return (f"{', '.join(culprits)}: refers to ${{{missing[0]}}}, which is not a key of the config; reference "
                f"an existing key (e.g. ${{data.resolution}}) or give the value itself. ({causes})")
    return f"the config could not be composed: {causes}"


def run_reporting_composition_errors(main: Callable[[], object], args: list[str]) -> None:
    """Run Hydra's `main`; an OmegaConf error that escapes Hydra's own report (e.g. while it resolves
    the run directory) is explained instead of printed as a bare traceback."""
    try:
        main()
    except (OmegaConfBaseException, HydraException) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"train.py: {explain_composition_error(err, args)}", file=sys.stderr)
        raise SystemExit(1) from None
