"""Every `train.py` command in the README runs as written: read as bash would split it, it passes
train.py's command-line check, composes, and passes the config check (no training; the user's
own files and this machine's hardware aside). So does every flag of the "Speed switches" table, as an override
of a key the config has."""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from ldm_train.command_line import command_line_problems, overrides_of
from tests.bad_command_lines import check_in_process, write_export
from tests.helpers import OPTION_NEEDS, REPO, STAGE_BASE, STAGES, compose_config, config_options

COMMAND = re.compile(r"^(?:\.venv/bin/)?python train\.py\b")
# Placeholders a reader fills in: `...`, `<date>`.
PLACEHOLDER = re.compile(r"(^|\s)\.\.\.(\s|$)|<[a-z ]+>")
ABSENT = object()  # OmegaConf.select's answer for a key the config lacks


def readme_train_commands() -> list[str]:
    """The README's `python train.py ...` lines inside ```bash blocks, continuation lines joined."""
    commands, in_bash = [], False
    lines = iter((REPO / "README.md").read_text().splitlines())
    for line in lines:
        if line.startswith("```"):
            in_bash = line.strip() == "```bash" and not in_bash
            continue
        if in_bash and COMMAND.match(line):
            while line.rstrip().endswith("\\"):
                line = line.rstrip()[:-1] + " " + next(lines).strip()
            commands.append(line)
    return commands


def jobs_of(command: str) -> list[list[str]]:
    """Bash's words after `train.py`, one list per job of a `-m` sweep."""
    parsed = OverridesParser.create().parse_overrides(overrides_of(shlex.split(command, comments=True)[2:]))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


COMMANDS = [c for c in readme_train_commands() if not PLACEHOLDER.search(c)]


def test_the_readme_has_runnable_train_commands():
    assert len(COMMANDS) >= 8
    assert any("data.train_shards" in c for c in COMMANDS), "the 'your own data' command is checked"


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_composes_and_passes_the_check(command: str, tmp_path: Path):
    assert not command_line_problems(shlex.split(command, comments=True)[2:]), command
    write_export(tmp_path)  # phase-2 commands find a phase-1 export, as after the phase-1 command
    for job in jobs_of(command):
        message = check_in_process(list(job), tmp_path, machine=False, files=False)
        assert message is None, f"{command}\n  job {job}:\n{message}"


# -- the flags of the README's "Speed switches" table ---------------------------------------------------------
SWITCH_SECTION = "### Speed switches"
SWITCH_FLAG_COLUMN = 1  # | switch | flag | default | what it does |
GROUP_STAGES = {"unet": ("ldm",), "autoencoder": ("autoencoder",)}  # the other groups: both stages


def readme_switch_flags() -> list[str]:
    """The backticked flags (`key` or `key=value`) of the table under "### Speed switches"."""
    lines = (REPO / "README.md").read_text().split(SWITCH_SECTION, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2:]))  # after the header
    return [flag for r in rows for flag in re.findall(r"`([^`]+)`", r.split("|")[SWITCH_FLAG_COLUMN + 1])]


def changed(value: object) -> str:
    """An override value other than the default: the boolean flipped, the integer plus one."""
    if isinstance(value, bool):
        return str(not value).lower()
    return str(value + 1) if isinstance(value, int) else str(value)


def switch_cases() -> list[tuple[str, list[str]]]:
    """(flag, base overrides) for every stage, and every data option for data.* flags, where the flag applies."""
    cases = []
    for flag in readme_switch_flags():
        group = flag.split(".")[0]
        if group == "data":
            bases = [[f"stage={stage}", f"data={option}", *OPTION_NEEDS.get(("data", option), [])]
                     for stage, option_group, option in config_options() if option_group == "data"]
        else:
            bases = [[f"stage={stage}"] for stage in GROUP_STAGES.get(group, STAGES)]
        cases += [(flag, [*STAGE_BASE[base[0].split("=")[1]], *base]) for base in bases]
    return cases


def test_the_switch_table_names_the_flags():
    flags = {flag.split("=")[0] for flag in readme_switch_flags()}
    assert {"optim.fused", "module.channels_last", "data.pin_memory", "data.prefetch_factor"} <= flags


@pytest.mark.parametrize(("flag", "base"), switch_cases(), ids=lambda case: case if isinstance(case, str) else " ".join(case))
def test_readme_switch_flag_is_a_config_key_that_composes(flag: str, base: list[str], tmp_path: Path):
    """`data=webdataset data.prefetch_factor=4`, as the table invites, overrides a key (no `+data...`) and passes
    the config check, for every stage and data option the flag applies to."""
    key, _, given = flag.partition("=")
    write_export(tmp_path)
    default = OmegaConf.select(compose_config(base, tmp_path), key, default=ABSENT)
    assert default is not ABSENT, f"{key} is not in the config of {' '.join(base)}"
    override = f"{key}={given or changed(default)}"
    assert check_in_process([*base, override], tmp_path, machine=False, files=False) is None, override
