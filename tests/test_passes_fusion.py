"""The fusion and liveness passes as pure functions: what they match and what they refuse."""
import pytest

import tndsl
from tndsl.passes.fuse_attention import FusedAttention, fuse_attention
from tndsl.passes.fuse_layer_norm import FusedNorm, fuse_layer_norm
from tndsl.passes.fusion import resolve
from tndsl.passes.liveness import insert_deletes

HEAD = """
dim P = 4
dim H = 2
dim E = 3
input q[p: P, h: H, e: E]
input k[p: P, h: H, e: E]
input v[p: P, h: H, e: E]
scores[h, p, s] = q[p, h, e] * k[s, h, e] / sqrt(E)
pattern[h, p, s] = softmax[s](scores[h, p, s] {mask})
z[p, h, e] = pattern[h, p, s] * v[s, h, e]
"""


def _items(text, extra=""):
    program = tndsl.parse(text + extra)
    return tuple(program.equations)


def test_attention_is_matched_with_its_roles_scale_and_mask():
    items = _items(HEAD.format(mask="where s <= p"))
    (fused,) = fuse_attention(items, frozenset(), frozenset({"q", "k", "v"}))
    assert isinstance(fused, FusedAttention) and fused.causal
    assert fused.query_roles == ("p", "h0", "e") and fused.key_roles == ("s", "h0", "e")
    assert fused.value_roles == ("s", "h0", "f") and fused.out_roles == ("p", "h0", "f")
    assert str(fused.scale) == "1/sqrt(E)"
    (unmasked,) = fuse_attention(_items(HEAD.format(mask="")), frozenset(),
                                 frozenset({"q", "k", "v"}))
    assert not unmasked.causal


@pytest.mark.parametrize("mask, extra, keep", [
    ("where s < p", "", ()),                       # strict: not SDPA's causal mask
    ("where s <= p", "", ("pattern",)),            # the pattern is an output
    ("where s <= p", "y[h, p, s] = scores[h, p, s]\n", ()),  # scores read elsewhere
    ("where s <= p + 1", "", ()),                  # an offset: not the causal mask
    ("where p - s < 2", "", ()),                   # a window alone
])
def test_attention_is_left_alone_when_it_cannot_be_fused(mask, extra, keep):
    items = _items(HEAD.format(mask=mask), extra)
    assert fuse_attention(items, frozenset(keep), frozenset({"q", "k", "v"})) == items


NORM = """
dim P = 4
dim M = 6
input x[p: P, m: M]
param w[m: M]
param b[m: M]
n[p, m] = layernorm[m](x[p, m])
y[p, m] = n[p, m] * w[m] + b[m] * ones[p]
"""


def test_layer_norm_affine_is_matched_and_refused_when_the_weight_is_not_a_param():
    items = _items(NORM)
    (fused,) = fuse_layer_norm(items, frozenset(), frozenset({"x"}), frozenset({"w", "b"}))
    assert isinstance(fused, FusedNorm)
    assert (fused.argument, fused.weight, fused.bias, fused.legs) == ("x", "w", "b", 1)
    assert fuse_layer_norm(items, frozenset(), frozenset({"x"}), frozenset({"b"})) == items
    assert fuse_layer_norm(items, frozenset({"n"}), frozenset({"x"}),
                           frozenset({"w", "b"})) == items


def test_liveness_deletes_after_the_last_use_and_inside_branches():
    body = ["a = x + 1", "if h:", "    s = a * 2", "    z = s + 1", "else:", "    z = a",
            "b = z * 2", "c = b + 1", "return c"]
    assert insert_deletes(body, {"a", "s", "z", "b", "c"}) == [
        "a = x + 1", "if h:", "    s = a * 2", "    z = s + 1", "    del s", "else:",
        "    z = a", "del a", "b = z * 2", "del z", "c = b + 1", "return c"]


def test_liveness_leaves_the_tail_alone():
    # The last statement, the value passed through its hook point and the return: what
    # the last statement read is dropped by the return as soon as by a `del`.
    body = ["a = f(x)", "b = g(a)", "c = h(b)", "c = self.hook_c(c)", "return c"]
    assert insert_deletes(body, {"a", "b", "c"}) == [
        "a = f(x)", "b = g(a)", "del a", "c = h(b)", "c = self.hook_c(c)", "return c"]
    # A call that is not a pass-through of one name ends the tail.
    body = ["a = f(x)", "b = g(a)", "c = h(b, a)", "return c"]
    assert insert_deletes(body, {"a", "b", "c"}) == body


def test_pass_names_resolve():
    # `projections` is opt-in: it keeps a packed copy of the weights it fuses.
    assert resolve(True) == {"attention", "experts", "layer_norm", "layout", "liveness"}
    assert resolve("all") == {"attention", "experts", "layer_norm", "layout", "liveness",
                              "projections"}
    assert resolve(False) == set()
    assert resolve(["attention"], ["attention"]) == set()
    assert resolve(True, ["liveness"]) == {"attention", "experts", "layer_norm", "layout"}
    assert resolve(True, ["experts"]) == {"attention", "layer_norm", "layout", "liveness"}
    assert resolve("all", ["liveness"]) == {"attention", "experts", "layer_norm", "layout",
                                            "projections"}


def test_liveness_keeps_a_branch_local_del_inside_its_branch_when_the_if_ends_there():
    # The else branch's last line also ends the `if`: `t` is local to the branch (it
    # does not exist when the other branch ran), `p` is dropped after the `if`.
    body = ["p = f()", "if p is None:", "    y = 1", "else:", "    t = g(p)", "    y = t[0]",
            "w = y + 1", "return w"]
    assert insert_deletes(body, {"p", "t", "y", "w"}) == [
        "p = f()", "if p is None:", "    y = 1", "else:", "    t = g(p)", "    y = t[0]",
        "    del t", "del p", "w = y + 1", "return w"]
