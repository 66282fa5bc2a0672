"""Every example checks, and its elaborated IR matches the golden dump."""
import subprocess
import sys

import pytest

import tndsl
from conftest import EXAMPLES, ROOT

GOLDEN = ROOT / "tests" / "golden" / "ir"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_ir_dump_matches_golden(path, golden):
    program = tndsl.load(path)
    golden(GOLDEN / (path.stem + ".txt"), program.dump())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_have_no_warnings(path):
    assert tndsl.load(path).warnings == ()


def test_cli_checks_all_examples():
    result = subprocess.run([sys.executable, "-m", "tndsl", "check", *map(str, EXAMPLES)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok\n") == len(EXAMPLES)
