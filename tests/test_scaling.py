"""Elaboration and checking are linear in the number of unrolled statements (issue 12).

Counted, not timed (no wall-time assertions in tests/: CI is a loaded 2-core machine):
the Python function calls made while parsing, elaborating and checking a loop ten times
longer are at most ~10x as many. That bounds the interpreted work; work inside a single
C-level operation (the quadratic step issue 12 removed was a list membership test per
equation, one bytecode each) is invisible to it, so the time itself is measured by
bench/check_speed.py, which prints the 1,000 / 10,000 / 100,000 series against the
10,000 one in the same run (docs/performance.md; the bound is 15x)."""
import sys

import pytest

import tndsl
from networks import long_loop


def calls(fn) -> int:
    """The number of Python function calls fn() makes (a deterministic count)."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event == "call":
            count += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


@pytest.mark.slow
def test_a_ten_times_longer_loop_checks_in_near_ten_times_the_calls():
    short, long = long_loop(2_000), long_loop(20_000)
    tndsl.parse(short)  # warm: the parser is built on first use
    program = tndsl.parse(long)
    assert sum(1 for eq in program.equations if eq.name.startswith("acc")) == 20_001
    # ~120 calls per statement at both sizes (9.9x when written); any per-statement
    # Python work over all statements placed so far would multiply the longer count.
    ratio = calls(lambda: tndsl.parse(long)) / calls(lambda: tndsl.parse(short))
    assert ratio < 11, f"{ratio:.1f}x the calls for 10x the statements"
