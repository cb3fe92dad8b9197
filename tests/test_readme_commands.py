"""Every `train.py` command in the README runs as written: read as bash would split it, it passes
train.py's command-line check, composes, and passes the config check (no training; the user's
own files and this machine's hardware aside)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from ldm_train.command_line import command_line_problems, overrides_of
from tests.bad_command_lines import check_in_process, write_export
from tests.helpers import REPO

COMMAND = re.compile(r"^(?:\.venv/bin/)?python train\.py\b")
# Placeholders a reader fills in: `...`, `<date>`.
PLACEHOLDER = re.compile(r"(^|\s)\.\.\.(\s|$)|<[a-z ]+>")


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
