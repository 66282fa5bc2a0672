"""The evaluation tiers stay within their budgets: every tensor is sized before it is
allocated, every term is contracted along a path, and a tier that cannot decide within
its memory or time budget says so in the verdict instead of being killed or hanging."""
import math
import random
import resource

import pytest
import torch

import tndsl
from tndsl.verify import prove_all
from tndsl.verify.budget import MAX_ENTRIES, Budget, Stopped
from tndsl.verify.numeric import Modular
from tndsl.verify.reference import Reference


def ring_text(n: int, rng: random.Random, transpose: int | None = None) -> str:
    factors = [f"A[x{k}, x{(k + 1) % n}]" if k != transpose else f"A[x{(k + 1) % n}, x{k}]"
               for k in range(n)]
    rng.shuffle(factors)
    return " * ".join(factors)


def test_reference_and_modular_contract_a_shuffled_ring_along_a_path():
    # tr(A^24) at N = 12, its factors in random order: contracted left to right, the
    # shuffled ring would need tensors of 12^k entries; along a path, 12^2 suffice.
    rng = random.Random(0)
    program = tndsl.parse(f"dim N = 12\nparam A[i: N, j: N]\nt[] = {ring_text(24, rng)}\n")
    a = torch.randn(12, 12, dtype=torch.float64) / 4
    tight = Budget(max_entries=12 ** 2)
    value = Reference(program, {"A": a}, budget=tight)["t"]
    expected = torch.trace(torch.linalg.matrix_power(a, 24))
    assert torch.allclose(value, expected, rtol=1e-10, atol=0)
    modular = Modular(program, torch.Generator().manual_seed(0), tight)
    exact = modular.equation("t")
    # the oracle: repeated squaring of the same integers, reduced modulo p
    m, p = modular.values["A"], 1_000_003
    power = torch.eye(12, dtype=torch.long)
    for _ in range(24):
        power = (power @ m) % p
    assert int(exact) == int(torch.trace(power) % p)


def test_no_tensor_over_the_budget_is_allocated():
    program = tndsl.parse("dim N = 12\nparam A[i: N, j: N]\nt[i, j, k] = A[i, j] * A[j, k]\n")
    with pytest.raises(Stopped, match="1,728 entries, over the budget of 1,000"):
        Reference(program, {"A": torch.randn(12, 12)}, budget=Budget(max_entries=1000))["t"]


TEN_LEGS = ", ".join(f"l{k}: N" for k in range(10))


def test_a_ten_leg_tensor_is_evaluated_at_smaller_sizes(monkeypatch):
    # issue 16: at N = 12 the tensor has 6·10^10 entries; the tiers shrink N instead.
    # Every tensor is sized before it exists: the ones at N = 12 are refused, and none
    # allowed (so allocated) is over the budget; a few sizes are tried, not a search.
    asked, allowed = [], []
    allow = Budget.allow

    def recorded(self, shape, what):
        asked.append(math.prod(shape))
        allow(self, shape, what)
        assert math.prod(shape) <= MAX_ENTRIES, f"{what}: {shape} allowed"
        allowed.append(math.prod(shape))

    monkeypatch.setattr(Budget, "allow", recorded)
    legs = ", ".join(f"a{k}" for k in range(10))
    swapped = ", ".join(f"a{k}" for k in [1, 0, *range(2, 10)])
    program = tndsl.parse(f"dim N = 12\nparam T[{TEN_LEGS}]\n"
                          f"check swap: T[{legs}] == T[{swapped}]\n")
    (result,) = prove_all(program)
    assert 12 ** 10 in asked and 12 ** 10 not in allowed
    assert len(asked) <= 100
    assert result.status == "refuted", result.render()
    assert result.counterexample.sizes["N"] < 12


def test_a_tensor_too_large_at_any_size_is_refused_with_the_reason():
    legs = ", ".join(f"a{k}" for k in range(24))
    swapped = ", ".join(f"a{k}" for k in [1, 0, *range(2, 24)])
    dims = ", ".join(f"l{k}: N" for k in range(24))
    program = tndsl.parse(f"dim N = 12\nparam T[{dims}]\ncheck swap: T[{legs}] == T[{swapped}]\n")
    (result,) = prove_all(program)
    assert result.status == "unknown", result.render()
    assert "randomized exact: stopped: random data for `T` would have" in result.detail
    assert "over the budget of" in result.detail
    # the symbolic residual is still reported
    assert len(result.residual) == 2


def test_issue_15_a_product_of_sums_squared_falls_to_a_bounded_tier():
    factor = "(A[a, b] + B[a, b])"
    program = tndsl.parse("dim N = 3\nparam A[i: N, j: N]\nparam B[i: N, j: N]\n"
                          f"s[a, b] = {' * '.join([factor] * 13)}\n"
                          "check sq: s[a, b] * s[b, c] == s[a, b] * s[b, c]\n")
    # Bounded by the expansion's monomial cap (the detail below) and by memory, not timed.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (result,) = prove_all(program)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 1024 * 1024, f"peak memory grew by {grown_kib} KiB"  # not 6 GB
    assert (result.status, result.tier) == ("proven", "randomized exact"), result.render()
    assert "stopped: the expansion exceeds 20,000 monomials" in result.detail


def test_each_tier_says_when_it_ran_out_of_time():
    program = tndsl.parse("dim N = 3\nparam A[i: N, j: N]\n"
                          "check t: A[i, j] * A[j, k] == A[i, j] * A[j, k]\n"
                          "check b: relu(A[i, j]) == relu(A[j, i])\n")
    out_of_time = Budget(seconds=0.0)
    poly, boxed = prove_all(program, budgets={"symbolic": out_of_time,
                                              "randomized exact": out_of_time,
                                              "numeric": out_of_time})
    assert poly.status == "unknown", poly.render()
    assert "symbolic: stopped: over its time budget of 0 s" in poly.detail
    assert "randomized exact: stopped: over its time budget of 0 s" in poly.detail
    assert boxed.status == "unknown", boxed.render()
    assert "numeric: stopped: over its time budget of 0 s" in boxed.detail
