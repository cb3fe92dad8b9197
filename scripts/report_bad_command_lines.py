"""How many of the bad command lines of tests/bad_command_lines.py fail at composition, and how fast.

    .venv/bin/python scripts/report_bad_command_lines.py [--subprocess 7]

"At composition" means train.py's checks reject the command line (its own grammar check, Hydra's
composition, or `validate_config`) with no network, data module or Trainer constructed. Times: the
checks in-process (compose + validate), and wall time of `python train.py ...` runs to their error
(start-up included: importing torch and Lightning is most of it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests/ holds the case table
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from tests.bad_command_lines import (  # noqa: E402
    CASES,
    BuildCounter,
    applies_here,
    args_for,
    prepare_root,
    timed,
    warm_up,
)
from tests.helpers import run_train  # noqa: E402
from tests.test_bad_command_lines import SUBPROCESS_CASES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subprocess", type=int, default=len(SUBPROCESS_CASES),
                        help="how many of the test's subprocess cases to run through python train.py")
    args = parser.parse_args()
    cases = [c for c in CASES if applies_here(c)]
    root = Path(tempfile.mkdtemp(prefix="bad_command_lines_"))
    prepare_root(root)
    warm_up(root)

    at_composition, times, unnamed = 0, [], []
    for case in cases:
        counter = BuildCounter().install()
        try:
            message, seconds = timed(args_for(case, root), root)
        finally:
            counter.remove()
        if message is not None and not counter.built:
            at_composition += 1
            times.append(seconds)
        if message is None or any(word not in message for word in case.expected):
            unnamed.append(case.name)
    print(f"cases: {len(cases)} ({sum('stage=ldm' in c.args for c in cases)} phase 2)")
    print(f"fail at composition (nothing built): {at_composition}/{len(cases)}")
    print(f"median time to the error, in-process checks: {statistics.median(times) * 1000:.0f} ms "
          f"(max {max(times) * 1000:.0f} ms)")
    print(f"messages missing the key, value or fix: {unnamed or 'none'}")

    walls = []
    for name in SUBPROCESS_CASES[: args.subprocess]:
        case = next(c for c in cases if c.name == name)
        run_root = Path(tempfile.mkdtemp(prefix="bad_command_line_run_"))
        prepare_root(run_root)
        start = time.perf_counter()
        result = run_train(args_for(case, run_root), run_root, timeout=300)
        walls.append(time.perf_counter() - start)
        print(f"  python train.py {' '.join(case.args)}: exit {result.returncode} after {walls[-1]:.1f} s")
    if walls:
        print(f"median time to the error, python train.py: {statistics.median(walls):.1f} s over {len(walls)} runs")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, lightning"], check=True)
        print(f"for scale, `import torch, lightning` alone: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
