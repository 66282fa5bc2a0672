"""Resource guards and determinism (docs/robustness.md)."""
import math
import subprocess
import sys

import pytest

import tndsl
from tndsl.lang.errors import ResourceError
from tndsl.verify import prove_all, symbolic
from tndsl.verify.budget import Budget
from conftest import ROOT


def test_a_param_over_the_memory_budget_is_refused_before_any_allocation(monkeypatch):
    # Refused from sizes, not by trying: before the code generator analyses a single
    # equation (let alone plans, builds or allocates anything).
    from tndsl.codegen import torch as codegen

    def analyse(*args, **kwargs):
        raise AssertionError("compiled the program before refusing its param")

    monkeypatch.setattr(codegen, "analyse", analyse)
    program = tndsl.parse("dim N = 1000000\nparam W[i: N, j: N]\ninput x[j: N]\n"
                          "y[i] = W[i, j] * x[j]\n")
    with pytest.raises(ResourceError, match=r"param `W` needs a tensor of 3\.6 TiB") as info:
        program.compile()
    assert info.value.span.line == 2


def test_the_budget_is_configurable():
    program = tndsl.parse("dim N = 1000\nparam W[i: N, j: N]\ny[i, j] = 2 * W[i, j]\n")
    program.compile(memory_budget=2**30)  # 4 MB: fine
    with pytest.raises(ResourceError, match="over the memory budget of 1.0 MiB"):
        program.compile(memory_budget=2**20)


def test_an_enormous_loop_is_refused_at_once(monkeypatch):
    # At once: not one iteration of the loop's body is elaborated.
    from tndsl.lang.elaborate import _Elaborator
    bodies, statements = [], _Elaborator._statements

    def counted(self, stmts, *args):
        bodies.append(len(stmts))
        assert len(bodies) < 100, "the loop is being unrolled"
        return statements(self, stmts, *args)

    monkeypatch.setattr(_Elaborator, "_statements", counted)
    with pytest.raises(ResourceError, match="1,000,000,000,000 iterations"):
        tndsl.parse("for l in 0..1000000000000 { }\n")
    assert bodies == [1]  # the file's top level only


def test_verification_runs_at_small_sizes_whatever_the_files_sizes(monkeypatch):
    # N x N at these sizes would be 4 TB; the proof and the counterexample use small ones:
    # every tensor the tiers size (Budget.allow, before it exists) is small.
    asked = []
    allow = Budget.allow

    def recorded(self, shape, what):
        asked.append(math.prod(shape))
        return allow(self, shape, what)

    monkeypatch.setattr(Budget, "allow", recorded)
    program = tndsl.parse("dim N = 1000000\nparam A[i: N, j: N]\nparam B[i: N, j: N]\n"
                          "check A[i, j] * B[j, k] == B[j, k] * A[i, j]\n"
                          "check A[i, j] == A[j, i]\n")
    proven, refuted = prove_all(program)
    assert proven.status == "proven" and refuted.status == "refuted"
    assert refuted.counterexample.sizes["N"] <= 24
    assert asked and max(asked) <= 24 ** 2


def test_a_box_with_many_legs_does_not_make_the_verifier_hang(monkeypatch):
    legs = ", ".join(f"l{k}: N" for k in range(9))
    idx = ", ".join(f"l{k}" for k in range(9))
    program = tndsl.parse(f"dim N = 2\ninput x[{legs}]\ncheck [{idx}] relu(x[{idx}]) == "
                          f"relu(x[{idx}])\n")
    # Not by trying the box's 9! = 362,880 slot orders: count the expansions and
    # canonical forms the symbolic tier computes (6 canonical forms when written).
    work = []

    def counted(original):
        def spy(*args, **kwargs):
            work.append(original.__name__)
            assert len(work) <= 1000, "the verifier is enumerating slot orders"
            return original(*args, **kwargs)
        return spy

    monkeypatch.setattr(symbolic, "canonical", counted(symbolic.canonical))
    monkeypatch.setattr(symbolic.Expander, "expand", counted(symbolic.Expander.expand))
    (result,) = prove_all(program)
    assert result.status == "proven"
    assert 0 < len(work) <= 1000


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
