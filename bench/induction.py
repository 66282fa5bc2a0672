"""The induction study's budget: the whole study (`tndsl study induction`, 2,500
training steps and the analysis) must take under 3 CPU minutes, and the analysis of
saved weights (`--weights`) a small fraction of that. Timing lives here, not in
tests/ (a loaded CI machine made a timed test fail): docs/performance.md keeps the
figures.

    python bench/induction.py [--steps 2500] [--budget 180]

Prints the CPU and wall seconds of the study and of the re-analysis, the ratio of the
re-analysis to the study (measured in the same run), and whether the budget holds
(exit status 1 if not).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tndsl.interp.induction import Config, run


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--budget", type=float, default=180.0, help="CPU seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "report"
        _, wall, cpu = timed(lambda: run(out, Config(steps=args.steps), stream=None))
        _, again_wall, again_cpu = timed(
            lambda: run(Path(folder) / "again", weights=out / "weights.safetensors",
                        stream=None))
    print(f"study, {args.steps} steps: {cpu:.1f} s CPU ({wall:.1f} s wall); "
          f"budget {args.budget:.0f} s CPU: {'met' if cpu < args.budget else 'MISSED'}")
    print(f"analysis of the saved weights: {again_cpu:.1f} s CPU ({again_wall:.1f} s wall), "
          f"{again_cpu / cpu:.2f}x the study's")
    return 0 if cpu < args.budget else 1


if __name__ == "__main__":
    sys.exit(main())
