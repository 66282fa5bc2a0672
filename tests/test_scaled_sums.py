"""Regression tests for issue 16: a coefficient on a bracketed sum (or on any compound
operand) must scale all of it. The generated code once read `2.0 * a + b` for
`2 * (a[i] + b[i])`; every form here is checked against the float64 reference evaluator
(tndsl/verify/reference.py), and the simplest against hand-written torch too."""
import pytest
import torch

import tndsl
from tndsl.codegen.precedence import as_left_factor, as_primary, as_right_factor
from tndsl.verify.compiled import compare_compiled

HEADER = """dim N = 3
dim M = 4
input a[i: N]
input b[i: N]
input c[i: N]
input A[i: N, j: M]
input B[i: N, j: M]
param C[j: M, k: N]
"""

FORMS = [
    "y[i] = 2 * (a[i] + b[i])",
    "y[i] = 2 * (a[i] + b[i]) * c[i]",
    "y[i] = (a[i] + b[i]) * c[i] * 2",
    "y[i] = 3 * (a[i] + b[i]) * (a[i] + c[i])",
    "y[i, k] = 2 * (A[i, j] + B[i, j]) * C[j, k]",
    "y[i] = 2 * (a[i] - b[i])",
    "y[i] = -(a[i] + b[i])",
    "y[i] = (a[i] + b[i]) / 4",
    "y[i] = 2 * (3 * (a[i] + b[i]) + c[i])",
    "y[i] = 2 * identity(a[i] + b[i])",
    "y[i, k] = 2 * (A[i, j] * C[j, k] + a[i] * c[k] where k <= i)",
    "y[] = 2 * (a[i] + b[i]) * c[i]",
    "y[i] = 0.5 * (a[i] * b[i] + c[i]) * (a[i] + b[i] + c[i])",
]


@pytest.mark.parametrize("form", FORMS)
def test_a_coefficient_scales_the_whole_bracketed_sum(form):
    program = tndsl.parse(HEADER + form + "\n", "scaled.tn")
    report = compare_compiled(program, outputs=["y"], tolerance=1e-10)
    assert report.ok, form + "\n" + report.render()
    assert report.differences["y"] <= 1e-10


def test_the_issue_example_against_hand_written_torch():
    program = tndsl.parse("dim N = 3\ninput a[i: N]\ninput b[i: N]\ny[i] = 2 * (a[i] + b[i])\n")
    module = program.module(["y"])
    a, b = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    assert torch.allclose(module(a, b), 2 * (a + b), rtol=0, atol=1e-12)


def test_a_symbolic_coefficient_scales_all_of_its_operand():
    # `verify --compiled` fixes every size, so a sum of dims as a coefficient (`N + 1`,
    # emitted as Python over the run-time size) is checked here against torch directly.
    program = tndsl.parse("dim N\ninput a[i: N]\ninput b[i: N]\n"
                          "y[i] = (N + 1) * a[i]\nz[i] = (N + 1) * (a[i] + b[i])\n")
    module = program.module(["y", "z"])
    a, b = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    result = module(a, b)
    assert torch.allclose(result["y"], 6 * a, rtol=0, atol=1e-12)
    assert torch.allclose(result["z"], 6 * (a + b), rtol=0, atol=1e-12)


def test_a_one_hot_lookup_into_a_bracketed_sum_looks_up_all_of_it():
    text = ("dim P = 3\ndim V = 5\ndim D = 2\ninput tok[p: P, v: onehot V]\n"
            "param E[v: V, d: D]\nparam F[v: V, d: D]\n"
            "y[p, d] = tok[p, v] * (E[v, d] + F[v, d])\n"
            "z[p, d] = 2 * tok[p, v] * (E[v, d] - F[v, d])\n")
    program = tndsl.parse(text, "lookup.tn")
    assert compare_compiled(program, outputs=["y", "z"], tolerance=1e-10).ok
    module = program.module(["y", "z"])
    tokens = torch.tensor([4, 0, 2])
    E, F = dict(module.named_parameters())["E"], dict(module.named_parameters())["F"]
    result = module(tokens)
    assert torch.allclose(result["y"], (E + F)[tokens])
    assert torch.allclose(result["z"], 2 * (E - F)[tokens])


@pytest.mark.parametrize("code, left, right, primary", [
    ("x", "x", "x", "x"),
    ("a + b", "(a + b)", "(a + b)", "(a + b)"),
    ("a - b", "(a - b)", "(a - b)", "(a - b)"),
    ("a * b", "a * b", "(a * b)", "(a * b)"),
    ("a @ w", "a @ w", "(a @ w)", "(a @ w)"),
    ("N ** 0.5", "N ** 0.5", "N ** 0.5", "(N ** 0.5)"),
    ("-2.0", "-2.0", "-2.0", "(-2.0)"),
    ("2.0", "2.0", "2.0", "(2.0)"),
    ("torch.relu(a + b)", "torch.relu(a + b)", "torch.relu(a + b)", "torch.relu(a + b)"),
    ("x[..., None]", "x[..., None]", "x[..., None]", "x[..., None]"),
    ("a if c else b", "(a if c else b)", "(a if c else b)", "(a if c else b)"),
])
def test_brackets_are_added_exactly_where_grouping_would_change(code, left, right, primary):
    assert (as_left_factor(code), as_right_factor(code), as_primary(code)) == \
        (left, right, primary)
    # Whatever was added, the grouping is the one intended: compare values.
    env = {"x": 3.0, "a": 2.0, "b": 5.0, "w": None, "N": 4.0, "c": True, "torch": torch}
    if "@" in code or "..." in code or "torch" in code:
        return
    value = eval(code, env)  # noqa: S307 - fixed test strings
    assert eval(f"7.0 * {as_right_factor(code)}", env) == pytest.approx(7.0 * value)
    assert eval(f"{as_left_factor(code)} * 7.0", env) == pytest.approx(value * 7.0)
