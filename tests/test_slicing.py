"""Sliced contraction in one process: the plan respects the memory budget, the sum over
slices equals the unsliced einsum, and misuse is a located error. (2 ranks:
tests/test_distributed.py.)"""
import pytest
import torch

import tndsl
from tndsl.lang.errors import ResourceError, TnError, UnknownNameError
from tndsl.parallel.slicing import contract_sliced, plan_slices
from networks import RING_PRODUCT, ring_of_six

# A closed ring of six order-3 tensors: no bottleneck, so the largest intermediate of
# any contraction order grows with the bond dimension.
RING = ring_of_six(bond=6, phys=5) + f"""\
dim Free
input u[k: Free]
open[a, b] = {RING_PRODUCT}
two[] = A[a, x, b] * F[b, x, a] + A[a, x, b] * F[b, x, a]
boxed[a, x, b] = relu(A[a, x, b])
unsized[] = u[k] * u[k]
"""


@pytest.fixture(scope="module")
def ring():
    program = tndsl.parse(RING, "ring.tn")
    generator = torch.Generator().manual_seed(0)
    tensors = {t.name: torch.randn(*[program.sizes[l.dim] for l in t.legs],
                                   generator=generator, dtype=torch.float64)
               for t in program.params}
    return program, tensors


@pytest.mark.parametrize("name, spec", [("total", "axb,byc,cxd,dye,ezf,fza->"),
                                        ("open", "axb,byc,cxd,dye,ezf,fza->ab")])
@pytest.mark.parametrize("budget", [1200, 4000, 10**6])
def test_the_sum_over_slices_equals_einsum_under_the_budget(ring, name, spec, budget):
    program, tensors = ring
    plan = plan_slices(program, name, memory_budget=budget)
    assert plan.slice_bytes <= budget
    assert not set(plan.sliced) & set(plan.output)  # only contracted indices are sliced
    if plan.unsliced_largest * 8 > budget:
        assert plan.nslices > 1
    expected = torch.einsum(spec, *(tensors[n] for n in "ABCDEF"))
    value = contract_sliced(plan, tensors)
    assert (value - expected).abs().max() < 1e-10 * expected.abs().max()


def test_a_plan_round_trips_through_its_json(ring):
    program, tensors = ring
    plan = plan_slices(program, "total", memory_budget=1200)
    again = plan.with_json(plan.to_json())
    assert again == plan


def test_misuse_is_a_located_error(ring):
    program, tensors = ring
    with pytest.raises(ResourceError, match="leaves nothing of the memory budget of 100 bytes") as info:
        plan_slices(program, "open", memory_budget=100)  # the 36-entry output alone
    assert "ring.tn:12:" in info.value.render()
    with pytest.raises(ResourceError, match="even with every contracted index sliced"):
        plan_slices(program, "open", memory_budget=300)  # 12 bytes left beside the output
    with pytest.raises(TnError, match="a sum of 2 terms"):
        plan_slices(program, "two", memory_budget=10**6)
    with pytest.raises(TnError, match="other than params and inputs") as info:
        plan_slices(program, "boxed", memory_budget=10**6)
    assert "ring.tn:14:" in info.value.render()
    with pytest.raises(TnError, match="dim `Free` has no size"):
        plan_slices(program, "unsized", memory_budget=10**6)
    with pytest.raises(UnknownNameError, match="did you mean `total`"):
        plan_slices(program, "totl", memory_budget=10**6)
    plan = plan_slices(program, "total", memory_budget=10**6)
    with pytest.raises(UnknownNameError, match="no tensor given for `F`"):
        contract_sliced(plan, {k: v for k, v in tensors.items() if k != "F"})
    with pytest.raises(TnError, match="`A` has shape"):
        contract_sliced(plan, {**tensors, "A": tensors["A"][:1]})


# ---- exactness on random programs ---------------------------------------------------------

import json
from collections import Counter

from hypothesis import HealthCheck, Phase, given, settings

from fuzzing import FUZZ_DIMS, bounded, valid_programs
from tndsl.lang import ir
from tndsl.lang.printer import expression
from tndsl.verify.numeric import random_tensors
from tndsl.verify.reference import Reference

SLICING_CASES = 40
SLICED = Counter()  # what the fuzz run compared, checked by the test after it


def _single_products(program) -> list[str]:
    """Each term of each equation that is one product of declared tensors and `ones`,
    written as an equation of its own (`S0[a, b] = -2 * T0[a, k1] * T1[k1, b] / 4`)."""
    tensors = {t.name for t in program.network.tensors}
    lines = []
    for eq in program.equations:
        for term in eq.rhs.terms:
            if not all(isinstance(f, ir.Ref) and (f.name in tensors or f.name == ir.ONES)
                       for f in term.factors):
                continue
            carried = {i for f in term.factors if f.name != ir.ONES for i in f.indices}
            if carried and carried >= {i for f in term.factors for i in f.indices}:
                # (an index only `ones` has takes its dim from another term: alone, the
                # term would not check)
                lines.append(f"S{len(lines)}[{', '.join(eq.indices)}] = "
                             f"{expression(ir.Sum((term,)))}")
    return lines


@settings(max_examples=SLICING_CASES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(valid_programs())
def test_sliced_contractions_of_random_programs_equal_the_compiled_module_and_reference(text):
    """Every single-product term of a random program (coefficients, signs, division by
    numbers and dims, `ones`, diagonals, copy legs, fixed tensors), contracted whole and
    with every contracted index sliced, equals the reference evaluator (float64) and
    the compiled module on the same data."""
    with bounded(60):
        program = tndsl.parse(text, "random.tn", FUZZ_DIMS)
        lines = _single_products(program)
        if not lines:
            return
        program = tndsl.parse(text + "\n".join(lines) + "\n", "random.tn", FUZZ_DIMS)
        names = [f"S{k}" for k in range(len(lines))]
        values = random_tensors(program, torch.Generator().manual_seed(0))
        reference = Reference(program, values)
        generated = program.compile(names)
        module = generated.build().to(torch.float64)
        with torch.no_grad():
            for name, param in module.named_parameters():
                param.copy_(values[name])
            compiled = module(*(values[n] for n in generated.inputs))
        if len(names) == 1:
            compiled = {names[0]: compiled}
        dense = {}  # contract_sliced takes one-hot inputs as tensors with the one-hot leg
        for tensor in program.network.tensors:
            if tensor.kind == "fixed":
                continue  # built by contract_sliced from the definition
            dense[tensor.name] = reference.values[tensor.name]
        for name in names:
            expected = reference[name]
            scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
            assert (compiled[name] - expected).abs().max() <= 1e-9 * scale, name
            whole = plan_slices(program, name, memory_budget=10**9)
            # these networks are too small for a budget to force slicing: slice every
            # contracted index (in a plan as another rank would send it)
            contracted = [i for i in whole.sizes if i not in whole.output
                          and any(i in idx for _, idx in whole.operands)]
            for plan in (whole, whole.with_json(json.dumps(
                    {"path": [list(p) for p in whole.path], "sliced": contracted}))):
                value = contract_sliced(plan, dense)
                assert value.shape == expected.shape, name
                assert (value - expected).abs().max() <= 1e-9 * scale, \
                    f"{name} sliced over {plan.sliced}: {program.equation(name).rhs}"
            SLICED["terms"] += 1
            SLICED["sliced"] += plan.nslices > 1
            SLICED["coefficient"] += program.equation(name).rhs.terms[0].coefficient != 1


def test_the_slicing_fuzz_run_exercised_slicing_and_coefficients():
    if not SLICED["terms"]:
        test_sliced_contractions_of_random_programs_equal_the_compiled_module_and_reference()
    assert SLICED["terms"] >= 30 and SLICED["sliced"] >= 5 and SLICED["coefficient"] >= 5, \
        dict(SLICED)


def test_the_coefficient_survives_slicing():
    """The issue's case: `v[i] = 2 * A[i, j] * x[j]` was returned as `A @ x`."""
    program = tndsl.parse("dim I = 3\ndim J = 40\nparam A[i: I, j: J]\ninput x[j: J]\n"
                          "v[i] = 2 * A[i, j] * x[j]\nw[i] = -A[i, j] * x[j] / J / 2\n")
    A = torch.randn(3, 40, dtype=torch.float64)
    x = torch.randn(40, dtype=torch.float64)
    for name, expected in (("v", 2 * A @ x), ("w", -(A @ x) / 80)):
        plan = plan_slices(program, name, memory_budget=10**6)
        sliced = plan.with_json('{"path": [[0, 1]], "sliced": ["j"]}')  # 40 slices
        assert sliced.nslices == 40
        for p in (plan, sliced):
            assert torch.allclose(contract_sliced(p, {"A": A, "x": x}), expected)


@pytest.mark.parametrize("argument", ["memory_budget", "bytes_per_entry"])
@pytest.mark.parametrize("value", [0, -8, 2.5, True])
def test_budget_arguments_are_checked(ring, argument, value):
    program, _ = ring
    options = {"memory_budget": 10**6, argument: value}
    with pytest.raises(ValueError, match=f"{argument} must be a positive integer"):
        plan_slices(program, "total", **options)


def test_tensors_of_the_wrong_kind_are_argument_errors(ring):
    program, tensors = ring
    plan = plan_slices(program, "total", memory_budget=10**6)
    with pytest.raises(ValueError, match="`A` must be a floating-point torch.Tensor, got list"):
        contract_sliced(plan, {**tensors, "A": [[1.0]]})
    with pytest.raises(ValueError, match="`A` must be a floating-point torch.Tensor, got "
                                         "torch.int64"):
        contract_sliced(plan, {**tensors, "A": tensors["A"].long()})
    with pytest.raises(ValueError, match="share one dtype"):
        contract_sliced(plan, {**tensors, "A": tensors["A"].float()})
