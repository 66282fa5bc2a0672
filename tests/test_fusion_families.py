"""Attention fusion on the family models (issue 11): grouped-query attention through
`F.scaled_dot_product_attention(enable_gqa=True)`, window clauses dropped when they always
hold and fused with a boolean mask when they do not; the explicit path a hook takes
gives the unfused values; `torch.compile` sees one graph."""
import pytest
import torch

import tndsl
from tndsl.interp.hooks import run_with_cache
from tndsl.passes.fuse_attention import FusedAttention, fuse_attention
from conftest import ROOT

LLAMA = ROOT / "examples" / "mistral.tn"  # Llama with its sliding window
# 3 query heads per key/value head; Context has no size (any length runs).
SMALL = {"Vocab": 11, "Model": 24, "Heads": 6, "KVHeads": 2, "Head": 4, "Hidden": 10,
         "Layers": 2}


def _random(module, seed=0):
    module = module.double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(module.named_parameters()):
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64)
                        * 0.5)
    return module.eval()


def _pair(dims, seed=0, **fused_options):
    program = tndsl.load(LLAMA, dims=dims)
    return (program, _random(program.module(**fused_options), seed),
            _random(program.module(fuse=False), seed))


def _tokens(length, seed=1):
    return torch.randint(0, 11, (2, length), generator=torch.Generator().manual_seed(seed))


# ---- the pass ------------------------------------------------------------------------

GQA = """
dim P = 6
dim H = 4
dim G = 2
dim E = 3
dim W = {window}
input q[p: P, h: H, e: E]
input k[p: P, g: G, e: E]
input v[p: P, g: G, e: E]
fixed group[h: H, g: G] = grouping
scores[h, p, s] = q[p, h, e] * group[h, g] * k[s, g, e] / sqrt(E)
pattern[h, p, s] = softmax[s](scores[h, p, s] where {mask})
z[p, h, e] = pattern[h, p, s] * {value}
"""
SIZES = {"P": 6, "H": 4, "G": 2, "E": 3}


def _fuse(window=6, mask="s <= p and p - s < W", value="group[h, g] * v[s, g, e]",
          sizes=SIZES, varying=frozenset()):
    program = tndsl.parse(GQA.format(window=window, mask=mask, value=value))
    items = tuple(program.equations)
    result = fuse_attention(items, frozenset(), frozenset({"q", "k", "v"}),
                            frozenset({"group"}),
                            None if sizes is None else {**sizes, "W": window}, varying)
    return items, result


def test_grouped_attention_is_matched_with_the_key_value_heads_as_the_query_heads():
    _, (fused,) = _fuse()
    assert isinstance(fused, FusedAttention) and fused.grouping == "group"
    assert fused.query_roles == ("p", "h0", "e") and fused.key_roles == ("s", "h0", "e")
    assert fused.value_roles == ("s", "h0", "f") and fused.out_roles == ("p", "h0", "f")
    assert fused.causal and fused.window is None  # p - s < 6 always holds for P = 6


@pytest.mark.parametrize("mask", ["s <= p and p - s < W", "s <= p and p < s + W",
                                  "s <= p and p <= s + W - 1", "s <= p and s > p - W",
                                  "p >= s and s >= p - W + 1"])
def test_a_real_window_is_kept_in_each_spelling(mask):
    _, (fused,) = _fuse(window=3, mask=mask)
    assert fused.causal and fused.window == 3


def test_a_window_alone_fuses_without_the_causal_clause():
    _, (fused,) = _fuse(window=2, mask="p - s < W")
    assert not fused.causal and fused.window == 2


def test_a_window_at_least_the_varying_length_bound_is_dropped():
    _, (fused,) = _fuse(window=6, varying=frozenset({"P"}))  # lengths up to 6
    assert fused.window is None
    _, (fused,) = _fuse(window=5, varying=frozenset({"P"}))
    assert fused.window == 5


@pytest.mark.parametrize("options", [
    dict(sizes=None, window=3),                        # no sizes: a window cannot fuse
    dict(window=3, mask="s <= p and p - s < W and p - s < 2"),  # two windows
    dict(window=3, mask="s <= p and s - p < W"),       # the window the other way round
    dict(window=1, mask="s <= p and p < s + W - 1"),   # every row empty
    dict(window=6, mask="s < p"),                      # strict: the first row empty
])
def test_attention_is_left_alone_when_it_cannot_be_fused(options):
    items, result = _fuse(**options)
    assert result == items


def test_a_value_not_through_the_grouping_is_not_fused():
    text = GQA.replace("input v[p: P, g: G, e: E]", "input v[p: P, h: H, e: E]")
    items = tuple(tndsl.parse(text.format(window=6, mask="s <= p",
                                          value="v[s, h, e]")).equations)
    assert fuse_attention(items, frozenset(), frozenset({"q", "k", "v"}),
                          frozenset({"group"}), {**SIZES, "W": 6}) == items


def test_a_grouping_on_the_query_side_is_not_fused():
    text = """
dim P = 4
dim H = 4
dim G = 2
dim E = 3
input q[p: P, g: G, e: E]
input k[p: P, h: H, e: E]
input v[p: P, h: H, e: E]
fixed group[h: H, g: G] = grouping
scores[h, p, s] = q[p, g, e] * group[h, g] * k[s, h, e]
pattern[h, p, s] = softmax[s](scores[h, p, s] where s <= p)
z[p, h, e] = pattern[h, p, s] * v[s, h, e]
"""
    items = tuple(tndsl.parse(text).equations)
    assert fuse_attention(items, frozenset(), frozenset({"q", "k", "v"}),
                          frozenset({"group"}), {"P": 4, "H": 4, "G": 2, "E": 3}) == items


# ---- generated code --------------------------------------------------------------------

def _spied_attention(module, tokens, monkeypatch):
    """Runs the module (no KV cache) and returns what F.scaled_dot_product_attention and
    the generated `_windowed_attention` helper were called with."""
    sdpa, windowed = [], []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy_sdpa(q, k, v, *args, **kwargs):
        sdpa.append((q.size(-3), k.size(-3), v.size(-3), args, kwargs))
        return real_sdpa(q, k, v, *args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy_sdpa)
    helpers = module.blocks[0].attn.forward.__func__.__globals__
    if "_windowed_attention" in helpers:  # emitted only where a window may apply
        real_windowed = helpers["_windowed_attention"]

        def spy_windowed(q, k, v, window, causal, scale, grouped):
            windowed.append((window, causal, scale, grouped))
            return real_windowed(q, k, v, window, causal, scale, grouped)
        monkeypatch.setitem(helpers, "_windowed_attention", spy_windowed)
    with torch.no_grad():
        module(tokens)
    return sdpa, windowed


def test_grouped_attention_calls_sdpa_with_enable_gqa_and_repeats_nothing(monkeypatch):
    program = tndsl.load(LLAMA, dims={**SMALL, "Context": 8, "Window": 8})
    source = program.compile().source
    start = source.index("        else:\n            # z")
    fast = source[start:source.index("# out[", start)]
    # The window clause is dropped (a window as long as the context), causal, grouped
    # key/value heads, no repeat.
    assert "_cached_attention(q.transpose(-2, -3), k.transpose(-2, -3), " \
        "v.transpose(-2, -3), window=None, causal=True, scale=0.5, grouped=True, " \
        "cache=cache)" in fast
    assert "repeat_interleave" not in fast
    # Run without a cache: the fused kernel itself gets is_causal and enable_gqa, with
    # 6 query heads over the 2 key/value heads as they are (nothing repeated), no mask.
    assert "def _windowed_attention" not in source
    sdpa, windowed = _spied_attention(_random(program.module()), _tokens(8), monkeypatch)
    assert windowed == []
    assert sdpa == [(6, 2, 2, (), {"is_causal": True, "scale": 0.5, "enable_gqa": True})] \
        * SMALL["Layers"]
    # One query head per key/value head: the grouping is the identity, in every path.
    plain = tndsl.load(LLAMA, dims={**SMALL, "KVHeads": 6, "Context": 8, "Window": 8})
    assert "v.transpose(-2, -3), window=None, causal=True, scale=0.5, grouped=False, " \
        "cache=cache)" in plain.compile().source
    sdpa, _ = _spied_attention(_random(plain.module()), _tokens(8), monkeypatch)
    assert sdpa == [(6, 6, 6, (), {"is_causal": True, "scale": 0.5})] * SMALL["Layers"]


def test_a_window_shorter_than_the_context_calls_the_windowed_helper(monkeypatch):
    program = tndsl.load(LLAMA, dims={**SMALL, "Window": 3})
    assert "_cached_attention(q.transpose(-2, -3), k.transpose(-2, -3), " \
        "v.transpose(-2, -3), window=3, causal=True, scale=0.5, grouped=True, " \
        "cache=cache)" in program.compile().source
    # Without a cache the windowed helper gets (window, causal, scale, grouped); 7 tokens
    # are longer than the window, so the kernel gets a mask, not is_causal.
    sdpa, windowed = _spied_attention(_random(program.module()), _tokens(7), monkeypatch)
    assert windowed == [(3, True, 0.5, True)] * SMALL["Layers"]
    assert len(sdpa) == SMALL["Layers"]
    for queries, keys, values, args, kwargs in sdpa:
        assert (queries, keys, values, args) == (6, 2, 2, ())
        p, s = torch.arange(7)[:, None], torch.arange(7)
        assert torch.equal(kwargs["attn_mask"], (s <= p) & (p - s < 3))


# ---- numbers -----------------------------------------------------------------------------

@pytest.mark.parametrize("dims, lengths", [
    ({"Window": 3}, (2, 3, 7)),                   # windowed beyond 3, causal up to it
    ({"Window": 4, "Context": 8}, (8,)),          # fixed length, always windowed
    ({"Window": 8, "Context": 8}, (5, 8)),        # the clause dropped at compile time
    ({"Window": 2, "KVHeads": 6}, (6,)),          # multi-head attention, windowed
    ({"Window": 3, "KVHeads": 1}, (7,)),          # multi-query attention
])
def test_fused_equals_unfused_on_llama_and_mistral_shapes(dims, lengths):
    _, fused, unfused = _pair({**SMALL, **dims})
    for length in lengths:
        tokens = _tokens(length)
        with torch.no_grad():
            expected = unfused(tokens)
            actual = fused(tokens)
        assert expected.abs().max() > 1
        assert (actual - expected).abs().max().item() < 1e-10, length


def test_a_windowed_attention_without_head_or_batch_legs_fuses_and_equals_unfused():
    program = tndsl.parse("""
dim P = 6
dim E = 3
dim W = 2
input x[p: P, e: E]
param Wq[e: E, f: E]
q[p, f] = x[p, e] * Wq[e, f]
scores[p, s] = q[p, e] * q[s, e]
pattern[p, s] = softmax[s](scores[p, s] where s <= p and p - s < W)
z[p, e] = pattern[p, s] * q[s, e]
""")
    assert "_windowed_attention(q, q, q, window=2, causal=True, scale=1.0, grouped=False)" \
        in program.compile().source
    fused, unfused = _random(program.module()), _random(program.module(fuse=False))
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (fused(x) - unfused(x)).abs().max().item() < 1e-12


def test_the_window_mask_matches_an_independent_sliding_window_attention():
    """The fused forward against attention written out by hand on the cached q, k, v."""
    _, fused, _ = _pair({**SMALL, "Window": 3, "Layers": 1})
    tokens = _tokens(7)
    names = ["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v", "blocks.0.attn.z"]
    with torch.no_grad():
        _, cache = run_with_cache(fused, tokens, names=[n for n in names if "z" not in n])
        _, with_z = run_with_cache(fused, tokens, names=["blocks.0.attn.z"])
    q, k, v = (cache[n] for n in names[:3])           # [b, p, h, e], [b, s, g, e]
    k, v = k.repeat_interleave(3, dim=-2), v.repeat_interleave(3, dim=-2)
    scores = torch.einsum("bphe,bshe->bhps", q, k) / 2
    p, s = torch.arange(7)[:, None], torch.arange(7)[None, :]
    keep = (s <= p) & (p - s < 3)
    pattern = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
    expected = torch.einsum("bhps,bshe->bphe", pattern, v)
    assert (with_z["blocks.0.attn.z"] - expected).abs().max().item() < 1e-12


def test_a_pattern_hook_on_fused_grouped_attention_gives_the_unfused_pattern_and_output():
    program, fused, unfused = _pair({**SMALL, "Window": 3})
    assert "_windowed_attention(q" in program.compile().source
    tokens = _tokens(7)
    names = ["blocks.1.attn.pattern", "blocks.0.attn.scores"]
    explicit = _random(program.module(no_fuse=["attention"]))
    with torch.no_grad():
        out, cache = run_with_cache(fused, tokens, names=names)
        out_unfused, cache_unfused = run_with_cache(unfused, tokens, names=names)
        out_explicit, cache_explicit = run_with_cache(explicit, tokens, names=names)
        plain = fused(tokens)
    for name in names:  # the explicit path is the unfused code: the very same values
        assert torch.equal(cache[name], cache_explicit[name]), name
        assert (cache[name] - cache_unfused[name]).abs().max().item() < 1e-12, name
    assert torch.equal(out, out_explicit)
    assert (out - out_unfused).abs().max().item() < 1e-10
    assert (plain - out_unfused).abs().max().item() < 1e-10
    pattern = cache["blocks.1.attn.pattern"]            # [b, h, p, s], windowed
    assert torch.equal(pattern[..., 6, :3], torch.zeros_like(pattern[..., 6, :3]))


def test_an_inference_mode_call_leaves_caches_a_training_step_can_use():
    _, fused, unfused = _pair({**SMALL, "Window": 3})
    tokens = _tokens(7)
    with torch.inference_mode():
        fused(tokens)
    fused.train()
    fused(tokens).sum().backward()  # the cached rotary tables and window mask
    assert all(p.grad is not None for p in fused.parameters())


def test_torch_compile_takes_a_grouped_windowed_llama_as_one_graph():
    _, fused, _ = _pair({**SMALL, "Window": 3})
    compiled = torch.compile(fused, fullgraph=True, backend="eager")
    with torch.no_grad():
        for length in (7, 3):  # the masked path, then the plain causal one
            tokens = _tokens(length)
            assert (compiled(tokens) - fused(tokens)).abs().max().item() < 1e-12


# ---- norms -------------------------------------------------------------------------------

NORMS = """
dim P = 4
dim M = 6
input x[p: P, m: M]
param w[m: M]
param b[m: M]
"""


@pytest.mark.parametrize("body, function, bias, plus_one", [
    ("y[p, m] = rmsnorm[m](x[p, m], 1e-6) * w[m]", "rmsnorm", None, False),       # Llama
    ("y[p, m] = layernorm[m](x[p, m]) * w[m] + b[m] * ones[p]", "layernorm", "b", False),
    ("n[p, m] = rmsnorm[m](x[p, m])\ny[p, m] = n[p, m] + n[p, m] * w[m]", "rmsnorm", None,
     True),                                                                         # Gemma
])
def test_norm_forms_of_the_families_are_fused(body, function, bias, plus_one):
    from tndsl.passes.fuse_layer_norm import FusedNorm, fuse_layer_norm
    items = tuple(tndsl.parse(NORMS + body).equations)
    (fused,) = fuse_layer_norm(items, frozenset(), frozenset({"x"}), frozenset({"w", "b"}))
    assert isinstance(fused, FusedNorm) and fused.out.name == "y"
    assert (fused.function, fused.argument, fused.weight, fused.bias, fused.plus_one) == \
        (function, "x", "w", bias, plus_one)
    assert (fused.normalized is None) == ("\n" not in body)


@pytest.mark.parametrize("body", [
    "y[p, m] = rmsnorm[m](x[p, m]) * w[m] + rmsnorm[m](x[p, m])",   # two boxes
    "y[p, m] = rmsnorm[m](x[p, m]) * x[p, m]",                      # not a param weight
    "y[p, m] = rmsnorm[m](x[p, m]) * w[m] + rmsnorm[m](x[p, m]) * b[m]",
    "y[p, m] = 2 * rmsnorm[m](x[p, m]) * w[m]",                     # a coefficient
    "n[p, m] = rmsnorm[m](x[p, m])\ny[p, m] = n[p, m] + n[p, m] * w[m] + n[p, m]",
])
def test_norm_forms_that_are_not_a_weighted_norm_are_left_alone(body):
    from tndsl.passes.fuse_layer_norm import fuse_layer_norm
    items = tuple(tndsl.parse(NORMS + body).equations)
    assert fuse_layer_norm(items, frozenset(), frozenset({"x"}),
                           frozenset({"w", "b"})) == items


@pytest.mark.parametrize("example, call", [
    ("llama.tn", "F.rms_norm(x, (24,), self.w, eps=1e-05)"),
    ("pythia.tn", "F.layer_norm(x, (24,), self.w, self.b, eps=1e-05)"),
    ("gemma.tn", "F.rms_norm(x, (24,), (1 + self.w), eps=1e-06)"),
])
def test_family_norms_compile_to_one_call_and_equal_the_unfused_norms(example, call):
    dims = {"Vocab": 11, "Model": 24, "Heads": 3, "Hidden": 10, "Layers": 1}
    if example != "pythia.tn":  # Pythia's head is Model / Heads: 8, 2 of them rotating
        dims.update(Heads=6, KVHeads=2, Head=4)
    program = tndsl.load(ROOT / "examples" / example, dims=dims)
    assert call in program.compile().source
    fused = _random(program.module())
    unfused = _random(program.module(fuse=False))
    tokens = _tokens(5)
    with torch.no_grad():
        expected = unfused(tokens)
        assert (fused(tokens) - expected).abs().max().item() < 1e-10
        if example == "gemma.tn":  # a hook on the normalised value takes the explicit path
            _, cache = run_with_cache(fused, tokens, names=["blocks.0.ln1.normalized"])
            _, cache_unfused = run_with_cache(unfused, tokens,
                                              names=["blocks.0.ln1.normalized"])
            assert torch.equal(cache["blocks.0.ln1.normalized"],
                               cache_unfused["blocks.0.ln1.normalized"])


@pytest.mark.parametrize("window, mask, varying, dropped", [
    (7, "s <= p and p - s < W", frozenset(), True),            # W above the fixed length
    (6, "s <= p and p - s < P", frozenset({"P"}), True),       # W is the length itself
    (6, "s <= p and p - s < P - 1", frozenset({"P"}), False),  # one less: not always
    (6, "s <= p and p - s < W + 1", frozenset({"P"}), True),
])
def test_which_window_clauses_always_hold(window, mask, varying, dropped):
    _, result = _fuse(window=window, mask=mask, varying=varying)
    if dropped:
        (fused,) = result
        assert fused.window is None and fused.causal
    else:  # P - 1 is read at run time when P varies: the explicit path stays
        assert not any(isinstance(item, FusedAttention) for item in result)
