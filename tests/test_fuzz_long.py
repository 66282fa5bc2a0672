"""The long fuzz run (10,000 cases, about two minutes on CI) as part of the suite."""
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_ten_thousand_fuzz_cases_without_crash_hang_or_mismatch():
    result = subprocess.run([sys.executable, "bench/fuzz_long.py", "--cases", "10000"],
                            cwd=ROOT, capture_output=True, text=True, timeout=1500)
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert summary.startswith("10000 cases in") and "0 unexpected exceptions, 0 hangs" in summary
