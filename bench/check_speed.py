"""How long `tndsl check` takes on GPT-2 small, after import.

Compares the full pipeline (parse → elaborate → check) against parsing alone, in one
run, so the ratio shows where the time goes. Prints a table; run with
`python bench/check_speed.py`.
"""
from __future__ import annotations

import time
from pathlib import Path

from timing import median_seconds

import tndsl
from tndsl.syntax import parse_module

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gpt2_small.tn"


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


if __name__ == "__main__":
    main()
