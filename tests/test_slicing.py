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
