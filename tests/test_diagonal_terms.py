"""Regression tests for issue 16: a product of five or more tensors with a diagonal
(`W[c, c]`) or a leg only one operand has crashed `tndsl compile` with an IndexError.
Five operands or more are planned with opt_einsum's dp optimiser, which reduces such
an operand alone first; plans are now made of two-operand steps only."""
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings, strategies as st

import tndsl
from tndsl.passes.plan import pairwise_path, plan_term
from tndsl.verify.compiled import compare_compiled
from conftest import ROOT

HEADER = "dim N = 3\ndim M = 2\ninput x[i: N]\nparam W[i: N, j: N]\nparam V[i: M, j: N]\n"

TERMS = [
    "y[] = x[a] * x[a] * x[b] * x[b] * W[c, c]",
    "y[] = W[c, c] * x[a] * x[a] * x[b] * x[b]",
    "y[a, e] = x[a] * x[b] * x[b] * W[c, c] * W[d, d] * x[e]",
    "y[m, n, d, e] = V[m, a] * x[a] * x[b] * W[b, b] * x[c] * V[n, c] * W[d, e]",
    "y[d] = W[a, a] * W[b, b] * W[c, c] * x[d] * x[e] * x[e]",
]


@pytest.mark.parametrize("equation", TERMS)
@pytest.mark.parametrize("optimizer", ["auto", "dp", "optimal", "greedy", "random-greedy"])
def test_products_with_a_diagonal_compile_to_the_reference(equation, optimizer):
    program = tndsl.parse(HEADER + equation + "\n", "diagonal.tn")
    report = compare_compiled(program, outputs=["y"], tolerance=1e-10, optimizer=optimizer)
    assert report.ok, equation + "\n" + report.render()


def test_the_issue_example_against_hand_written_torch():
    program = tndsl.parse(HEADER + TERMS[0] + "\n")
    module = program.module(["y"]).double()
    x = torch.randn(3, dtype=torch.float64)
    W = dict(module.named_parameters())["W"]
    assert torch.allclose(module(x), (x @ x) ** 2 * torch.trace(W), rtol=1e-12, atol=0)


def test_the_cli_compiles_the_issue_example(tmp_path):
    source = tmp_path / "diag.tn"
    source.write_text(HEADER + TERMS[0] + "\n")
    for command in (["compile", str(source)], ["cost", str(source)]):
        result = subprocess.run([sys.executable, "-m", "tndsl", *command], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr


def test_a_one_operand_step_is_folded_into_the_next_pair():
    # dp on `a,a,b,b,cc->`: [(4,), (0, 1), (2, 3), (0, 1), (0, 1)]; after the trace
    # step the list is [a, a, b, b, cc], so its pairs keep their positions.
    assert pairwise_path([(4,), (0, 1), (2, 3), (0, 1), (0, 1)], 5) == \
        [(0, 1), (2, 3), (0, 1), (0, 1)]
    # Reducing operand 0 alone moves it to the end in opt_einsum's list, not in ours.
    # [0, 1, 2, 3] -> [1, 2, 3, 0']: its (2, 3) takes operands 3 and 0, here (3, 0).
    assert pairwise_path([(0,), (2, 3), (0, 1)], 4) == [(3, 0), (0, 1)]


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.lists(st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=3),
                min_size=5, max_size=8))
def test_every_plan_is_pairwise_and_computes_the_einsum(operands):
    counts = {}
    for op in operands:
        for c in op:
            counts[c] = counts.get(c, 0) + 1
    output = "".join(sorted(c for c, n in counts.items() if n == 1))
    specs = ["".join(op) for op in operands]
    sizes = {c: 2 + "abcdefg".index(c) % 3 for c in "abcdefg"}
    plan = plan_term(specs, output, sizes, optimizer="dp")
    assert len(plan.steps) == len(specs) - 1
    assert all(len(step.take) == 2 for step in plan.steps)
    # Run the steps with torch.einsum and compare with one einsum over everything.
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(*(sizes[c] for c in s), generator=generator,
                           dtype=torch.float64) for s in specs]
    current = list(tensors)
    for step in plan.steps:
        first, second = current.pop(step.take[0]), current.pop(step.take[1])
        current.append(torch.einsum(step.spec, first, second))
    expected = torch.einsum(",".join(specs) + "->" + output, *tensors)
    assert torch.allclose(current[0], expected, rtol=1e-10, atol=1e-10)
