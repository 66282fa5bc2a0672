"""A long fuzz run as part of the suite: 600 cases of `bench/fuzz_long.py` in four
parts of 150, each with its own seed, so pytest-xdist spreads them over the cores (the
10,000-case run, several CPU minutes since the generator covers the whole grammar, is
the benchmark's default; its results are in docs/robustness.md)."""
import subprocess
import sys

import pytest

from conftest import ROOT

PARTS, CASES = 4, 150


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(PARTS))
def test_fuzz_cases_without_crash_hang_or_mismatch(seed):
    result = subprocess.run([sys.executable, "bench/fuzz_long.py", "--cases", str(CASES),
                             "--seed", str(seed)],
                            cwd=ROOT, capture_output=True, text=True, timeout=1500)
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert summary.startswith(f"{CASES} cases in") and \
        "0 unexpected exceptions, 0 hangs" in summary, summary
