"""Top-k routing and expert dispatch (issue 26): the diagram sums over every expert and
the reference evaluator computes them all densely; the compiled model runs each expert
on the tokens routed to it only (`passes.fuse_experts`), and equals the dense form."""
import math

import pytest
import torch

import tndsl
from tndsl.verify.numeric import random_tensors
from tndsl.verify.reference import Reference
from conftest import ROOT, loaded

MIXTRAL = ROOT / "examples" / "mixtral.tn"
SMALL = {"Vocab": 13, "Model": 16, "Heads": 4, "KVHeads": 2, "Head": 4, "Hidden": 12,
         "Experts": 5, "Layers": 2}

MOE = """
dim T = 7
dim M = 6
dim X = 5
dim F = 4
input x[t: T, m: M]
param W_router[m: M, x: X]
param W_gate[x: X, f: F, m: M]
param W_in[x: X, m: M, f: F]
param W_out[m: M, x: X, f: F]
gates[t, x] = {gates}
gate[t, x, f] = {act}(x[t, m] * W_gate[x, f, m])
pre[t, x, f] = x[t, m] * W_in[x, m, f]
post[t, x, f] = gate[t, x, f] * pre[t, x, f]
out[t, m] = gates[t, x] * post[t, x, f] * W_out[m, x, f]
"""
TOPK = "normalize[x](topk[x](softmax[x](x[t, m] * W_router[m, x]), 2))"


def _moe(gates=TOPK, act="silu"):
    return tndsl.parse(MOE.format(gates=gates, act=act))


def _values(program, seed=0):
    return random_tensors(program, torch.Generator().manual_seed(seed))


def test_top_k_keeps_the_k_largest_and_normalize_divides_by_the_sum():
    program = tndsl.parse("dim N = 3\ndim E = 6\ninput a[n: N, e: E]\n"
                          "kept[n, e] = topk[e](a[n, e], 2)\n"
                          "shares[n, e] = normalize[e](topk[e](a[n, e], 2))\n")
    a = torch.tensor([[5.0, -1, 3, 4, 0, 2], [0, 0, 1, 0, -2, 1.5], [-3, -1, -2, -5, -4, -6]],
                     dtype=torch.float64)
    ref = Reference(program, {"a": a})
    expected = torch.tensor([[5.0, 0, 0, 4, 0, 0], [0, 0, 1, 0, 0, 1.5], [0, -1, -2, 0, 0, 0]],
                            dtype=torch.float64)
    assert torch.equal(ref["kept"], expected)
    assert torch.allclose(ref["shares"], expected / expected.sum(-1, keepdim=True))
    compiled = program.module(outputs=["kept", "shares"]).double()(a)
    assert torch.equal(compiled["kept"], expected)
    assert torch.allclose(compiled["shares"], ref["shares"], atol=1e-15)


def test_top_k_ties_go_to_the_first_in_order():
    program = tndsl.parse("dim E = 4\ninput a[e: E]\nkept[e] = topk[e](a[e], 2)\n")
    a = torch.tensor([1.0, 2, 2, 2], dtype=torch.float64)
    assert Reference(program, {"a": a})["kept"].tolist() == [0, 2, 2, 0]


@pytest.mark.parametrize("act", ["silu", "gelu_tanh", "relu"])
def test_the_pass_matches_and_the_dispatch_equals_the_dense_reference(act):
    program = _moe(act=act)
    source = program.compile().source
    assert "_experts(" in source and "W_out.permute(1, 2, 0)" in source
    values = _values(program)
    x = torch.randn(7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    compiled = loaded(program, values)(x)
    dense = Reference(program, {**values, "x": x})["out"]
    assert (compiled - dense).abs().max() < 1e-12
    unfused = loaded(program, values, fuse=False)(x)
    assert (compiled - unfused).abs().max() < 1e-12


def test_unrouted_experts_are_never_run():
    """Expert 4 gets no token (its router column is very negative) and its weights are
    NaN: the dense sum multiplies NaN by a zero gate and is NaN; dispatch never reads it."""
    program = _moe()
    values = _values(program)
    values["W_router"][:, 4] = -1e3
    for name in ("W_gate", "W_in"):
        values[name][4] = math.nan
    values["W_out"][:, 4] = math.nan
    x = torch.rand(7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert torch.isnan(loaded(program, values, fuse=False)(x)).all()
    assert torch.isfinite(loaded(program, values)(x)).all()


def test_a_hook_on_a_skipped_value_takes_the_dense_path():
    from tndsl.interp.hooks import run_with_cache
    program = _moe()
    values = _values(program)
    x = torch.randn(2, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    module = loaded(program, values)
    out, cache = run_with_cache(module, x, names=["post"])
    assert cache["post"].shape == (2, 7, 5, 4)
    assert (out - module(x)).abs().max() < 1e-12


def test_gates_that_are_not_top_k_are_compiled_densely():
    program = _moe(gates="softmax[x](x[t, m] * W_router[m, x])")
    assert "_experts(" not in program.compile().source


def test_gradients_flow_through_the_dispatch():
    program = _moe()
    values = _values(program)
    x = torch.randn(7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    fused, dense = loaded(program, values), loaded(program, values, fuse=False)
    for module in (fused, dense):
        module(x).square().sum().backward()
    for (name, a), (_, b) in zip(fused.named_parameters(), dense.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-12), name


def test_mixtral_moe_block_is_dispatched_and_equals_the_reference():
    program = tndsl.load(MIXTRAL, dims={**SMALL, "Context": 9})
    assert program.compile().source.count(" = _experts(") == 1  # one MoE class, used twice
    values = _values(program)
    tokens = torch.randint(0, 13, (9,), generator=torch.Generator().manual_seed(2))
    compiled = loaded(program, values)(tokens)
    dense = Reference(program, {**values, "tokens": tokens})["logits"]
    assert (compiled - dense).abs().max() < 1e-10
