"""A long fuzz run as part of the suite: 2,000 cases of `bench/fuzz_long.py` (the
10,000-case run, several CPU minutes since the generator covers the whole grammar, is
the benchmark's default; its results are in docs/robustness.md)."""
import subprocess
import sys

import pytest

from conftest import ROOT

CASES = 2000


@pytest.mark.slow
def test_two_thousand_fuzz_cases_without_crash_hang_or_mismatch():
    result = subprocess.run([sys.executable, "bench/fuzz_long.py", "--cases", str(CASES)],
                            cwd=ROOT, capture_output=True, text=True, timeout=1500)
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert summary.startswith(f"{CASES} cases in") and \
        "0 unexpected exceptions, 0 hangs" in summary, summary
