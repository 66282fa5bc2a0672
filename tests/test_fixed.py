"""Language features for the model families: fixed tensors (rotary maps, head groupings),
affine masks, consts and norm eps. Compiled models are compared with hand-written torch
and with the float64 reference evaluator (which builds fixed tensors densely)."""
import math

import pytest
import torch
import torch.nn.functional as F

import tndsl
from tndsl.lang.errors import LegError, SizeError, TnError, UnknownNameError
from tndsl.verify import prove_all
from tndsl.verify.numeric import random_tensors
from tndsl.verify.reference import Reference
from conftest import ROOT

ROTARY = """
dim Context = 7
dim Heads = 2
dim Head = 8
const Theta = 300
input x[p: Context, h: Heads, f: Head]
fixed R[p: Context, e: Head, f: Head] = rotary(Theta{fraction})
y[p, h, e] = R[p, e, f] * x[p, h, f]
back[p, h, f] = R[p, e, f] * y[p, h, e]
"""


def hand_rotary(x, theta, rotated):
    """Rotate-half RoPE as Hugging Face writes it, over the first `rotated` entries."""
    positions = torch.arange(x.shape[0], dtype=torch.float64)
    inverse = 1 / theta ** (torch.arange(0, rotated, 2, dtype=torch.float64) / rotated)
    angles = torch.cat([positions[:, None] * inverse] * 2, dim=-1)[:, None, :]
    part, rest = x[..., :rotated], x[..., rotated:]
    half = rotated // 2
    turned = torch.cat((-part[..., half:], part[..., :half]), dim=-1)
    return torch.cat((part * angles.cos() + turned * angles.sin(), rest), dim=-1)


@pytest.mark.parametrize("fraction, rotated", [("", 8), (", 0.5", 4), (", 0.3", 2)])
def test_rotary_compiles_to_cos_sin_and_equals_hand_written_rope(fraction, rotated):
    program = tndsl.parse(ROTARY.format(fraction=fraction))
    source = program.compile(["y", "back"]).source
    assert "_rotary(" in source and "einsum" not in source  # never a dense R
    module = program.module(["y", "back"]).to(torch.float64)
    x = torch.randn(7, 2, 8, dtype=torch.float64)
    out = module(x)
    torch.testing.assert_close(out["y"], hand_rotary(x, 300.0, rotated), atol=1e-12, rtol=0)
    torch.testing.assert_close(out["back"], x, atol=1e-12, rtol=0)  # R is orthogonal
    reference = Reference(program, {"x": x})
    torch.testing.assert_close(reference["y"], out["y"], atol=1e-12, rtol=0)


def test_rotary_module_runs_on_a_batch_of_any_length():
    program = tndsl.parse(ROTARY.format(fraction="").replace("dim Context = 7", "dim Context"))
    module = program.module(["y"]).to(torch.float64)
    x = torch.randn(3, 5, 2, 8, dtype=torch.float64)
    expected = torch.stack([hand_rotary(x[b], 300.0, 8) for b in range(3)])
    torch.testing.assert_close(module(x), expected, atol=1e-12, rtol=0)


GROUPED = """
dim Context = 5
dim Heads = 6
dim KVHeads = 2
dim Head = 4
input q[p: Context, h: Heads, e: Head]
input k[p: Context, g: KVHeads, e: Head]
fixed G[h: Heads, g: KVHeads] = grouping
scores[h, p, s] = q[p, h, e] * G[h, g] * k[s, g, e]
pooled[p, g, e] = G[h, g] * q[p, h, e]
"""


def test_grouping_is_repeat_interleave_and_group_sum_in_code():
    program = tndsl.parse(GROUPED)
    source = program.compile(["scores", "pooled"]).source
    assert "repeat_interleave(3" in source and ".unflatten(" in source
    module = program.module(["scores", "pooled"]).to(torch.float64)
    q = torch.randn(5, 6, 4, dtype=torch.float64)
    k = torch.randn(5, 2, 4, dtype=torch.float64)
    out = module(q, k)
    for h in range(6):  # head h reads key/value head h // 3
        torch.testing.assert_close(out["scores"][h], q[:, h] @ k[:, h // 3].T)
    torch.testing.assert_close(out["pooled"][:, 1], q[:, 3:6].sum(1))
    reference = Reference(program, {"q": q, "k": k})
    torch.testing.assert_close(reference["scores"], out["scores"])


def test_sliding_window_mask_equals_hand_written_band():
    program = tndsl.parse("""
dim Context = 9
dim Window = 3
input scores[p: Context, s: Context]
pattern[p, s] = softmax[s](scores[p, s] where s <= p and p - s < Window)
band[p, s] = scores[p, s] where s + 1 >= p - 2
""")
    module = program.module(["pattern", "band"]).to(torch.float64)
    scores = torch.randn(9, 9, dtype=torch.float64)
    out = module(scores)
    p = torch.arange(9)[:, None]
    s = torch.arange(9)[None, :]
    keep = (s <= p) & (p - s < 3)
    expected = torch.softmax(scores.masked_fill(~keep, -math.inf), dim=-1)
    torch.testing.assert_close(out["pattern"], expected)
    torch.testing.assert_close(out["band"], scores * (s + 1 >= p - 2))
    assert "p < s + Window" in program.dump()


def test_norm_eps_and_consts_given_at_load():
    text = """
dim N = 4
dim M = 6
const Eps = 0.5
input x[n: N, m: M]
r[n, m] = rmsnorm[m](x[n, m], Eps)
l[n, m] = layernorm[m](x[n, m], Eps / 5)
"""
    x = torch.randn(4, 6, dtype=torch.float64)
    for eps in (0.5, 2.0):
        program = tndsl.parse(text, consts={"Eps": eps} if eps != 0.5 else None)
        out = program.module(["r", "l"]).to(torch.float64)(x)
        expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        torch.testing.assert_close(out["r"], expected)
        torch.testing.assert_close(out["l"], F.layer_norm(x, (6,), eps=eps / 5))


def test_rope_folded_vs_unfolded_is_proven_and_its_twin_refuted():
    results = {r.label: r for r in prove_all(tndsl.load(ROOT / "examples" / "rotary_proof.tn"))}
    assert results["folded"].status == "proven", results["folded"].render()
    wrong = {r.label: r for r in prove_all(tndsl.load(ROOT / "examples" /
                                                      "rotary_proof_wrong.tn"))}
    assert wrong["folded_wrong"].status == "refuted"
    assert wrong["folded_wrong"].residual and wrong["folded_wrong"].counterexample


def test_a_fixed_tensor_is_drawn_as_its_own_node():
    program = tndsl.load(ROOT / "examples" / "llama.tn", dims={"Layers": 1})
    dot = program.render("blocks.0.attn.q").source
    assert 'class="tensor fixed"' in dot and "rotary" in dot


@pytest.mark.parametrize("text, error, message", [
    ("fixed R[p: N, e: N] = rotary(10)", LegError, "rotary` has legs"),
    ("fixed R[p: N, e: N, f: N] = rotray(10)", UnknownNameError, "valid: rotary, alibi, grouping"),
    ("fixed R[p: N, e: N, f: N] = rotary(10, 2)", SizeError, "fraction is in (0, 1]"),
    ("fixed G[h: N, g: M] = grouping", SizeError, "cannot be shared equally"),
    ("input a[i: N, j: N]\nb[i, j] = a[i, j] where 2 * i < j", UnknownNameError, "`i`"),
    ("input a[i: N, j: N]\nb[i, j] = a[i, j] where i + j < 3", LegError, "two legs"),
    ("input a[i: N]\nb[i] = softmax[i](a[i], 0.1)", TnError, "takes one argument"),
])
def test_mistakes_are_located_errors(text, error, message):
    with pytest.raises(error) as info:
        tndsl.parse("dim N = 6\ndim M = 4\n" + text)
    assert message in str(info.value) and info.value.span is not None


def test_unknown_const_given_at_load_is_an_error():
    with pytest.raises(UnknownNameError, match="unknown const `Thta`"):
        tndsl.load(ROOT / "examples" / "llama.tn", consts={"Thta": 1.0})


def test_rotary_where_the_compiler_has_no_cheap_form_is_a_located_error():
    program = tndsl.parse(ROTARY.format(fraction="") + "rr[p, s, f, g] = R[p, e, f] * R[s, e, g]\n")
    with pytest.raises(TnError) as info:
        program.compile(["rr"])
    assert "own equation" in info.value.hint and info.value.span.line == 10


def test_a_fixed_tensor_declared_in_a_block_compiles_in_each_instance():
    """Block classes name their own fixed tensors relative to the block."""
    program = tndsl.parse(
        "dim Context = 5\ndim Head = 4\ninput x[p: Context, e: Head]\n"
        "block Rot(a[p: Context, e: Head]) -> [p: Context, e: Head] {\n"
        "    fixed R[p: Context, e: Head, f: Head] = rotary(300)\n"
        "    return R[p, e, f] * a[p, f]\n}\n"
        "y[p, e] = x[p, e]\nfor i in 0..2 {\n    y[p, e] = Rot(y) as blocks.{i}\n}\n")
    module = program.module().double()
    assert "nn.ModuleList" in module.tndsl_source and "_rotary(" in module.tndsl_source
    x = torch.randn(5, 4, dtype=torch.float64)
    final = program.network.equations[-1].name
    assert (module(x) - Reference(program, {"x": x})[final]).abs().max() < 1e-10


def test_a_fixed_tensor_whose_compiled_form_needs_an_unsized_dim_is_a_located_error():
    program = tndsl.parse("dim Heads\ndim KV = 2\ndim Head = 3\n"
                          "fixed G[h: Heads, g: KV] = grouping\nparam k[g: KV, e: Head]\n"
                          "y[h, e] = G[h, g] * k[g, e]\n")
    with pytest.raises(SizeError, match="needs the size of `Heads`") as error:
        program.module()
    assert error.value.span is not None and error.value.span.line == 4
