"""Every error message, golden: file:line:col, the source line, a caret, a hint.

Each `tests/errors/NAME.tn` holds one mistake (or, for `three_mistakes`, three);
`NAME.out` is what `tndsl check` prints for it. Regenerate with --update-golden.
"""
from pathlib import Path

import pytest

import tndsl
from tndsl.lang.errors import TnError, TnErrors
from conftest import ROOT

CASES = sorted((ROOT / "tests" / "errors").glob("*.tn"))


def report(path: Path) -> str:
    name = path.relative_to(ROOT).as_posix()
    try:
        program = tndsl.parse(path.read_text(), name)
    except TnError as e:
        return e.render() + "\n"
    return "".join(w.render() + "\n" for w in program.warnings)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_error_message_matches_golden(path, golden):
    text = report(path)
    assert text.strip(), f"{path.name} produced no error or warning"
    golden(path.with_suffix(".out"), text)


def test_every_error_is_located_with_a_caret():
    for path in CASES:
        text = report(path)
        first = text.splitlines()[0]
        assert first.startswith(path.relative_to(ROOT).as_posix() + ":"), first
        assert "^" in text


def test_three_unrelated_mistakes_are_all_reported_in_order():
    path = ROOT / "tests" / "errors" / "three_mistakes.tn"
    with pytest.raises(TnErrors) as info:
        tndsl.parse(path.read_text(), "three.tn")
    located = [(e.span.line, e.span.col, type(e).__name__) for e in info.value.errors]
    assert located == [(6, 15, "LegError"), (7, 8, "UnknownNameError"),
                       (8, 15, "UnknownNameError")]


def test_unused_param_is_a_warning_not_an_error():
    program = tndsl.parse((ROOT / "tests" / "errors" / "unused_param.tn").read_text())
    assert [w.message for w in program.warnings] == ["param `unused` is never used"]


def test_close_matches_are_suggested():
    with pytest.raises(TnError) as info:
        tndsl.parse("dim N = 3\nparam W_Q[i: N]\ny[i] = W_q[i]\n")
    assert info.value.hint == "did you mean `W_Q`?"
