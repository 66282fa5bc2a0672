"""Resource guards and determinism (docs/robustness.md)."""
import subprocess
import sys
import time

import pytest

import tndsl
from tndsl.lang.errors import ResourceError
from tndsl.verify import prove_all
from conftest import ROOT


def test_a_param_over_the_memory_budget_is_refused_before_any_allocation():
    program = tndsl.parse("dim N = 1000000\nparam W[i: N, j: N]\ninput x[j: N]\n"
                          "y[i] = W[i, j] * x[j]\n")
    start = time.perf_counter()
    with pytest.raises(ResourceError, match=r"param `W` needs a tensor of 3\.6 TiB") as info:
        program.compile()
    assert info.value.span.line == 2
    assert time.perf_counter() - start < 5  # refused from sizes, not by trying


def test_the_budget_is_configurable():
    program = tndsl.parse("dim N = 1000\nparam W[i: N, j: N]\ny[i, j] = 2 * W[i, j]\n")
    program.compile(memory_budget=2**30)  # 4 MB: fine
    with pytest.raises(ResourceError, match="over the memory budget of 1.0 MiB"):
        program.compile(memory_budget=2**20)


def test_an_enormous_loop_is_refused_at_once():
    start = time.perf_counter()
    with pytest.raises(ResourceError, match="1,000,000,000,000 iterations"):
        tndsl.parse("for l in 0..1000000000000 { }\n")
    assert time.perf_counter() - start < 5


def test_verification_runs_at_small_sizes_whatever_the_files_sizes():
    # N x N at these sizes would be 4 TB; the proof and the counterexample use small ones.
    program = tndsl.parse("dim N = 1000000\nparam A[i: N, j: N]\nparam B[i: N, j: N]\n"
                          "check A[i, j] * B[j, k] == B[j, k] * A[i, j]\n"
                          "check A[i, j] == A[j, i]\n")
    start = time.perf_counter()
    proven, refuted = prove_all(program)
    assert proven.status == "proven" and refuted.status == "refuted"
    assert refuted.counterexample.sizes["N"] <= 24
    assert time.perf_counter() - start < 30


def test_a_box_with_many_legs_does_not_make_the_verifier_hang():
    legs = ", ".join(f"l{k}: N" for k in range(9))
    idx = ", ".join(f"l{k}" for k in range(9))
    program = tndsl.parse(f"dim N = 2\ninput x[{legs}]\ncheck [{idx}] relu(x[{idx}]) == "
                          f"relu(x[{idx}])\n")
    start = time.perf_counter()
    (result,) = prove_all(program)
    assert result.status == "proven"
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize("command", [
    ["cost", "examples/gpt2_small.tn", "blocks.0"],
    ["verify", "tests/verify/identities.tn"],
    ["check", "--dump", "examples/gpt2_small.tn"],
])
def test_cost_verify_and_dump_are_identical_across_hash_seeds(command):
    outputs = {subprocess.run([sys.executable, "-m", "tndsl", *command], cwd=ROOT,
                              capture_output=True, text=True,
                              env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout
               for seed in ("0", "31337")}
    assert len(outputs) == 1 and next(iter(outputs))
