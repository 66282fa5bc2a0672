"""How long `tndsl check` takes on GPT-2 small, after import, and how it scales with
the number of unrolled statements.

Compares the full pipeline (parse → elaborate → check) against parsing alone, in one
run, so the ratio shows where the time goes; then checks a `for` loop of 1,000, 10,000
and 100,000 one-line statements and prints each time against the 10,000 one (linear
means 10×; the bound is 15×). Prints tables; run with `python bench/check_speed.py`
(`--quick` stops the series at 10,000).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from timing import median_seconds

import tndsl
from tndsl.lang.syntax import parse_module

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "gpt2_small.tn"
sys.path.insert(0, str(ROOT / "tests"))
from networks import long_loop  # noqa: E402


def main() -> None:
    text = EXAMPLE.read_text()
    start = time.perf_counter()
    tndsl.parse(text, str(EXAMPLE))            # first call: builds (or loads) the parser
    first = time.perf_counter() - start
    parse = median_seconds(lambda: parse_module(text, str(EXAMPLE)), 20)
    full = median_seconds(lambda: tndsl.parse(text, str(EXAMPLE)), 20)
    print(f"{'GPT-2 small (12 layers)':<34}{'median s':>10}{'ratio':>8}")
    print(f"{'parse only':<34}{parse:>10.4f}{1.0:>8.2f}")
    print(f"{'parse + elaborate + check':<34}{full:>10.4f}{full / parse:>8.2f}")
    print(f"{'first check in a fresh process':<34}{first:>10.4f}{first / parse:>8.2f}")


def loop_scaling(sizes=(1_000, 10_000, 100_000)) -> None:
    seconds = {}
    for n in sizes:
        text = long_loop(n)
        start = time.perf_counter()
        tndsl.parse(text, "loop.tn")
        seconds[n] = time.perf_counter() - start
    print(f"\n{'loop of n statements, checked':<34}{'s':>10}{'vs 10k':>8}")
    for n, s in seconds.items():
        print(f"{f'n = {n:,}':<34}{s:>10.4f}{s / seconds[10_000]:>8.2f}")


if __name__ == "__main__":
    main()
    loop_scaling((1_000, 10_000) if "--quick" in sys.argv else (1_000, 10_000, 100_000))
