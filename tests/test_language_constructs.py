"""Issue 26's language constructs against independent oracles: soft-capping, ALiBi
(transformers' BLOOM slopes), interleaved rotary (GPT-J's formula), per-layer `if`
with `%`, and the located errors each gives on bad input."""

import pytest
import torch

import tndsl
from tndsl.verify import prove_all
from tndsl.verify.reference import Reference


def _ref(text, **values):
    program = tndsl.parse(text)
    return program, Reference(program, values)


def test_softcap_is_c_tanh_x_over_c_in_the_reference_and_the_compiled_model():
    program, ref = _ref("dim N = 5\ninput a[i: N]\ny[i] = softcap(a[i] * 3, 2.5)\n",
                        a=torch.tensor([-40.0, -1, 0, 0.3, 900], dtype=torch.float64))
    a = torch.tensor([-40.0, -1, 0, 0.3, 900], dtype=torch.float64)
    expected = 2.5 * torch.tanh(3 * a / 2.5)
    assert torch.allclose(ref["y"], expected, atol=1e-15)
    assert torch.allclose(program.module().double()(a), expected, atol=1e-15)


def test_alibi_values_are_blooms():
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor
    for heads in (1, 3, 4, 6, 8, 12):
        program = tndsl.parse(f"dim H = {heads}\ndim P = 5\ninput x[h: H, p: P, s: P]\n"
                              "fixed A[h: H, p: P, s: P] = alibi\n"
                              "y[h, p, s] = A[h, p, s] + x[h, p, s]\n")
        zero = torch.zeros(heads, 5, 5, dtype=torch.float64)
        dense = Reference(program, {"x": zero})["y"]
        # BLOOM: slope_h * key position (a per-query constant away from slope_h * (s - p))
        hf = build_alibi_tensor(torch.ones(1, 5), heads, torch.float64).reshape(heads, 1, 5)
        shift = dense - hf
        assert torch.allclose(shift, shift[..., :1].expand_as(shift), atol=1e-6)
        assert torch.allclose(dense[:, 0, :], hf[:, 0, :], atol=1e-6)  # float32 slopes
        compiled = program.module().double()(zero)
        assert (compiled - dense).abs().max() < 1e-15


def test_interleaved_rotary_is_gptjs_rotate_every_two():
    program = tndsl.parse("dim P = 6\ndim E = 8\ninput x[p: P, f: E]\n"
                          "fixed R[p: P, e: E, f: E] = rotary(100, 0.75, interleaved)\n"
                          "y[p, e] = R[p, e, f] * x[p, f]\n")
    x = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rotated = 6
    inverse = 1 / 100 ** (torch.arange(0, rotated, 2, dtype=torch.float64) / rotated)
    angles = torch.arange(6, dtype=torch.float64)[:, None] * inverse
    sin, cos = angles.sin().repeat_interleave(2, -1), angles.cos().repeat_interleave(2, -1)
    part = x[:, :rotated]
    every_two = torch.stack((-part[:, 1::2], part[:, ::2]), dim=-1).flatten(-2)
    expected = torch.cat((part * cos + every_two * sin, x[:, rotated:]), dim=-1)
    assert torch.allclose(Reference(program, {"x": x})["y"], expected, atol=1e-14)
    assert torch.allclose(program.module().double()(x), expected, atol=1e-14)


def test_if_chooses_per_layer_with_loop_variables_dims_and_consts():
    program = tndsl.parse("""
dim N = 2
dim Layers = 6
const Every = 3
input x[i: N]
block Local(x[i: N]) -> [i: N] {
    param a[i: N]
    return x[i] * a[i]
}
block Global(x[i: N]) -> [i: N] {
    param b[i: N]
    return x[i] * b[i]
}
h[i] = x[i]
for l in 0..Layers {
    if (l + 1) % Every == 0 and N >= 2 {
        h[i] = Global(h) as blocks.{l}
    } else {
        h[i] = Local(h) as blocks.{l}
    }
}
""")
    kinds = [p.name.split(".")[-1] for p in program.params]
    assert kinds == ["a", "a", "b", "a", "a", "b"]
    program = tndsl.parse("dim N = 2\ninput x[i: N]\nif N % 2 == 1 { y[i] = x[i] }\n"
                          "else { y[i] = 2 * x[i] }\n")
    assert program.module().double()(torch.ones(2, dtype=torch.float64)).tolist() == [2, 2]


@pytest.mark.parametrize("text, message", [
    ("dim N = 2\ninput x[i: N]\ny[i] = softcap(x[i])\n", "`softcap` takes a tensor and cap"),
    ("dim N = 2\ninput x[i: N]\ny[i] = softcap(x[i], 0)\n", "cap of `softcap` must be a positive"),
    ("dim N = 2\ninput x[i: N]\ny[i] = topk[i](x[i], 1.5)\n", "k of `topk` must be a whole"),
    ("dim N = 2\ninput x[i: N]\ny[i] = topk[i](x[i])\n", "`topk` takes a tensor and k"),
    ("dim N = 2\ninput x[i: N]\ny[i] = x[i] % 2\n", "`%` applies to scalars"),
    ("dim N = 2\ninput x[i: N]\nif Q > 1 { y[i] = x[i] }\n", "unknown dim or const `Q`"),
    ("dim N = 2\ndim P\ninput x[i: N]\nif P > 1 { y[i] = x[i] }\n", "needs the size of P"),
    ("dim H = 2\ndim P = 3\nfixed A[h: H, p: P] = alibi\n", "`alibi` has legs"),
    ("dim P = 2\ndim E = 4\nfixed R[p: P, e: E, f: E] = rotary(10, interleaved, 0.5)\n",
     "options of `rotary` come after its numbers"),
    ("dim H = 2\ndim P = 2\nfixed A[h: H, p: P, s: P] = alibi(2)\n", "`alibi` takes no"),
])
def test_bad_uses_are_located_errors(text, message):
    with pytest.raises(tndsl.TnError) as info:
        tndsl.parse(text)
    assert message in str(info.value)
    assert ":" in str(info.value).splitlines()[0] and "^" in str(info.value)


def test_the_verifier_proves_nothing_through_a_softcap_or_a_routing_box():
    program = tndsl.parse("dim N = 3\nparam a[i: N]\n"
                          "check cap: softcap(2 * a[i], 3) == 2 * softcap(a[i], 3)\n"
                          "check same: softcap(a[i], 3) == softcap(a[i], 3)\n"
                          "check k: topk[i](2 * a[i], 1) == 2 * topk[i](a[i], 1)\n")
    verdicts = {r.label: r.status for r in prove_all(program)}
    assert verdicts["same"] == "proven"        # the same box of the same argument
    assert verdicts["cap"] == "refuted"        # not linear: a real counterexample
    assert verdicts["k"] not in ("proven", "refuted")  # true (positive scaling), no lemma


def test_boxes_with_different_parameters_are_different_boxes():
    program = tndsl.parse("dim N = 3\nparam a[i: N]\n"
                          "check caps: softcap(a[i], 3) == softcap(a[i], 4)\n")
    (result,) = prove_all(program)
    assert result.status == "refuted"
