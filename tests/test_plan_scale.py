"""Planning above 20 operands (issue 12): the emitted path costs no more FLOPs than
opt_einsum's exhaustive `dp` (run directly, as the oracle) on chains and rings of 22 and
30 operands, and `tndsl cost` says which planner chose each order."""
import random
import subprocess
import sys

import opt_einsum
import pytest

from tndsl.passes.plan import LARGE_TERM, plan_term
from conftest import ROOT


def network(n: int, kind: str, seed: int):
    rng = random.Random(seed)
    letters = [opt_einsum.get_symbol(k) for k in range(n + 1)]
    operands = [letters[k] + letters[k + 1] for k in range(n)]
    if kind == "ring":  # tr(A1 ... An)
        operands[-1] = letters[n - 1] + letters[0]
        output = ""
    else:               # the matrix chain A1 ... An
        output = letters[0] + letters[n]
    sizes = {c: rng.choice([2, 3, 5, 8, 16, 32, 64]) for c in letters}
    return operands, output, sizes


@pytest.mark.parametrize("n", [22, 30])
@pytest.mark.parametrize("kind", ["chain", "ring"])
@pytest.mark.parametrize("seed", [0, 1])
def test_large_terms_are_planned_no_worse_than_dp(n, kind, seed):
    operands, output, sizes = network(n, kind, seed)
    plan = plan_term(operands, output, sizes)
    shapes = [tuple(sizes[c] for c in op) for op in operands]
    spec = ",".join(operands) + "->" + output
    _, dp = opt_einsum.contract_path(spec, *shapes, shapes=True, optimize="dp")
    _, greedy = opt_einsum.contract_path(spec, *shapes, shapes=True,
                                         optimize=opt_einsum.RandomGreedy(max_repeats=64))
    assert plan.flops <= int(dp.opt_cost)
    assert plan.planner == "dp with a cost cap"
    # ... and strictly better than the random-greedy search used before, where it can be
    assert plan.flops < int(greedy.opt_cost) or int(greedy.opt_cost) == int(dp.opt_cost)


def test_dense_large_terms_fall_back_to_greedy_searches():
    # 24 operands all sharing one contracted index: dp's search would be exponential
    operands = [f"z{opt_einsum.get_symbol(k + 1)}" for k in range(LARGE_TERM + 4)]
    sizes = {c: 3 for op in operands for c in op}
    plan = plan_term(operands, "", sizes)
    assert plan.planner in {"greedy", "random-greedy"}


def test_cli_cost_reports_the_planner():
    text = subprocess.run([sys.executable, "-m", "tndsl", "cost", "examples/attention_head.tn"],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "  planner  optimal" in text
    json_text = subprocess.run([sys.executable, "-m", "tndsl", "cost", "--json",
                                "examples/attention_head.tn"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout
    assert '"planner": "optimal"' in json_text
