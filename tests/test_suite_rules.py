"""Rules the test suite keeps about itself (issue 22, point 9): no test bounds a wall
or CPU time, so a loaded machine cannot fail `make test`; speed is measured in bench/.
A timer that turns a hang into a failure (`fuzzing.bounded`, a subprocess timeout) is a
hang guard, not a budget, and is allowed."""
import ast

from conftest import ROOT

CLOCKS = {"perf_counter", "perf_counter_ns", "process_time", "process_time_ns", "time",
          "time_ns", "monotonic", "monotonic_ns", "thread_time", "thread_time_ns"}


def _clock_reads(tree: ast.AST) -> list[int]:
    """Lines that read a clock: `time.<clock>()` or a clock imported from `time`."""
    imported = {alias.asname or alias.name for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module == "time"
                for alias in node.names if alias.name in CLOCKS}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (isinstance(f, ast.Attribute) and f.attr in CLOCKS
                and isinstance(f.value, ast.Name) and f.value.id == "time") \
                or (isinstance(f, ast.Name) and f.id in imported):
            lines.append(node.lineno)
    return lines


def test_no_test_reads_a_clock():
    found = {path.name: lines for path in sorted((ROOT / "tests").rglob("*.py"))
             if (lines := _clock_reads(ast.parse(path.read_text(), str(path))))}
    assert not found, f"timing belongs in bench/ (docs/performance.md): {found}"


def test_the_rule_sees_each_way_of_reading_a_clock():
    for text in ("import time\nt = time.perf_counter()\n",
                 "from time import process_time as clock\nt = clock()\n",
                 "import time\nassert time.time() - 1 < 5\n"):
        assert _clock_reads(ast.parse(text)), text
    assert not _clock_reads(ast.parse("import signal\nsignal.setitimer(0, 1.0)\n"))
