"""Path attribution: every path evaluated from the model's cached activations, checked
against a hand-written plain-torch transformer, summing to the model's value."""
import math

import pytest
import torch

import tndsl
from tndsl.interp.attribution import attribute
from tndsl.lang.errors import TnError
from tndsl.interp.paths import expand_paths
from conftest import ROOT

SIZES = {"Context": 8, "Vocab": 10, "Model": 16, "Heads": 2}


@pytest.fixture(scope="module")
def setup():
    program = tndsl.load(ROOT / "examples" / "attn_only_2l.tn", dims=SIZES)
    model = program.module(["logits"]).double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.4, generator=generator)
    tokens = torch.randint(0, SIZES["Vocab"], (3, SIZES["Context"]), generator=generator)
    w = {k: v.detach() for k, v in model.named_parameters()}
    return program, model, tokens, w, by_hand(w, tokens)


def by_hand(w, tokens):
    """The two-layer attention-only transformer in plain torch: residual streams and
    patterns, [batch, ...]."""
    d_head = SIZES["Model"] // SIZES["Heads"]
    ctx = SIZES["Context"]
    causal = torch.ones(ctx, ctx, dtype=torch.bool).tril()

    def layer(x, l):
        q = torch.einsum("bpm,hme->bhpe", x, w[f"blocks.{l}.attn.W_Q"])
        k = torch.einsum("bsm,hme->bhse", x, w[f"blocks.{l}.attn.W_K"])
        scores = q @ k.transpose(-1, -2) / math.sqrt(d_head)
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        return pattern, scores
    resid0 = w["embed.W_E"][tokens] + w["pos_embed.W_pos"]
    pattern0, scores0 = layer(resid0, 0)
    ov0 = torch.einsum("bhps,bsm,hmn->bhpn", pattern0, resid0,
                       w["blocks.0.attn.W_V"] @ w["blocks.0.attn.W_O"])
    resid1 = resid0 + ov0.sum(1)
    pattern1, scores1 = layer(resid1, 1)
    return {"resid0": resid0, "pattern0": pattern0, "ov0": ov0, "pattern1": pattern1,
            "scores1": scores1}


def test_logit_paths_match_plain_torch_and_sum_to_the_logits(setup):
    program, model, tokens, w, hand = setup
    result = attribute(model, expand_paths(program, "logits"), tokens)
    assert result.largest_error < 1e-10
    W_U = w["unembed.W_U"]
    ov = {l: w[f"blocks.{l}.attn.W_V"] @ w[f"blocks.{l}.attn.W_O"] for l in (0, 1)}
    direct = hand["resid0"] @ W_U
    layer0 = torch.einsum("bhps,bsm,hmn,nv->bpvh", hand["pattern0"], hand["resid0"], ov[0], W_U)
    layer1 = torch.einsum("bhps,bsm,hmn,nv->bpvh", hand["pattern1"], hand["resid0"], ov[1], W_U)
    virtual = torch.einsum("bjps,bist,btm,imn,jnk,kv->bpvij", hand["pattern1"],
                           hand["pattern0"], hand["resid0"], ov[0], ov[1], W_U)
    for label, expected in [("direct", direct), ("blocks.0.attn", layer0),
                            ("blocks.1.attn", layer1),
                            ("blocks.0.attn->blocks.1.attn", virtual)]:
        assert torch.allclose(result.values[label], expected, atol=1e-10, rtol=0), label
    logits = direct + layer0.sum(-1) + layer1.sum(-1) + virtual.sum((-1, -2))
    assert torch.allclose(result.value, logits, atol=1e-10, rtol=0)


def test_qk_paths_per_layer0_head(setup):
    program, model, tokens, w, hand = setup
    result = attribute(model, expand_paths(program, "blocks.1.attn.scores"), tokens)
    assert result.largest_error < 1e-10
    d_head = SIZES["Model"] // SIZES["Heads"]
    k_term = torch.einsum("bpm,hme,hne,bisn->bhpsi", hand["resid0"], w["blocks.1.attn.W_Q"],
                          w["blocks.1.attn.W_K"], hand["ov0"]) / math.sqrt(d_head)
    assert torch.allclose(result.values["p: direct, s: blocks.0.attn"], k_term,
                          atol=1e-10, rtol=0)
    assert torch.allclose(result.value, hand["scores1"], atol=1e-10, rtol=0)
    # per head: the mean of the K-term for each layer-0 head, on a region
    stripe = lambda v: v[:, 1, 4:, 1:5].diagonal(dim1=-2, dim2=-1)  # noqa: E731
    per_head = result.per_head("p: direct, s: blocks.0.attn", stripe)
    expected = torch.stack([stripe(k_term[..., i]).mean() for i in range(SIZES["Heads"])])
    assert torch.allclose(per_head, expected, atol=1e-12, rtol=0)


def test_the_table_adds_up(setup):
    program, model, tokens, _, _ = setup
    result = attribute(model, expand_paths(program, "blocks.1.attn.scores"), tokens)
    first_row = lambda v: v[:, :, 0]  # noqa: E731
    rows = result.table({"first query": first_row})
    assert [r["path"] for r in rows[:4]] == [t.label for t in
                                             expand_paths(program, "blocks.1.attn.scores").terms]
    paths, total, value = rows[:4], rows[4], rows[5]
    for column in ("mean", "first query"):
        assert abs(sum(r[column] for r in paths) - total[column]) < 1e-10
        assert abs(total[column] - value[column]) < 1e-10
    assert abs(value["mean"] - float(result.value.mean())) < 1e-12
    text = result.render({"first query": first_row})
    assert "| p: direct, s: blocks.0.attn |" in text and "Largest difference" in text


def test_a_model_without_the_hook_points_is_told_so(setup):
    program, _, tokens, _, _ = setup
    partial = program.module(["blocks.0.attn.out"]).double()
    with pytest.raises(TnError, match="no hook point `blocks.1.attn.pattern`"):
        attribute(partial, expand_paths(program, "logits"), tokens)


def test_three_layers_with_the_embedding_inlined():
    """In a loop the first `resid` is rebound, so its paths hold `tokens` itself: the
    one-hot input is given by name and the eight paths still add up to the logits."""
    from test_paths import THREE_LAYERS
    program = tndsl.parse(THREE_LAYERS, "three.tn")
    model = program.module(["logits"]).double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5, generator=generator)
    tokens = torch.randint(0, 10, (2, 8), generator=generator)
    expansion = expand_paths(program, "logits")
    with pytest.raises(TnError, match="inputs=\\{'tokens'"):
        attribute(model, expansion, tokens)
    result = attribute(model, expansion, tokens, inputs={"tokens": tokens})
    assert len(result.values) == 8 and result.largest_error < 1e-10
    w = {k: v.detach() for k, v in model.named_parameters()}
    direct = w["embed.W_E"][tokens] @ w["unembed.W_U"]
    assert torch.allclose(result.values["direct"], direct, atol=1e-12, rtol=0)


# ---- fixed tensors (rotary maps, groupings) in the paths ------------------------------------

# Llama-shaped and attention-only: rotary positions on q and k, grouped-query attention
# (4 query heads on 2 key/value heads), so the paths hold both fixed tensors.
LLAMA_ATTN = """
dim Context = 6
dim Vocab = 10
dim Model = 16
dim Heads = 4
dim KVHeads = 2
dim Head = 4
const Theta = 100
input tokens[p: Context, v: onehot Vocab]
param embed.W_E[v: Vocab, m: Model]
param unembed.W_U[m: Model, v: Vocab]
fixed rotary[p: Context, e: Head, f: Head] = rotary(Theta)
fixed group[h: Heads, g: KVHeads] = grouping
block Attention(x[p: Context, m: Model]) -> [p: Context, m: Model] {
    param W_Q[h: Heads, m: Model, e: Head]
    param W_K[g: KVHeads, m: Model, e: Head]
    param W_V[g: KVHeads, m: Model, e: Head]
    param W_O[h: Heads, e: Head, m: Model]
    q_pre[p, h, f] = x[p, m] * W_Q[h, m, f]
    k_pre[p, g, f] = x[p, m] * W_K[g, m, f]
    q[p, h, e] = rotary[p, e, f] * q_pre[p, h, f]
    k[p, g, e] = rotary[p, e, f] * k_pre[p, g, f]
    v[p, g, e] = x[p, m] * W_V[g, m, e]
    scores[h, p, s] = q[p, h, e] * group[h, g] * k[s, g, e] / sqrt(Head)
    pattern[h, p, s] = softmax[s](scores[h, p, s] where s <= p)
    z[p, h, e] = pattern[h, p, s] * group[h, g] * v[s, g, e]
    return z[p, h, e] * W_O[h, e, m]
}
resid0[p, m] = tokens[p, v] * embed.W_E[v, m]
resid1[p, m] = resid0[p, m] + Attention(resid0) as blocks.0.attn
resid2[p, m] = resid1[p, m] + Attention(resid1) as blocks.1.attn
logits[p, v] = resid2[p, m] * unembed.W_U[m, v]
"""


def _rope(x, theta):
    """Rotate-half RoPE as Hugging Face writes it, positions on dim -3: [..., p, heads, e]."""
    head = x.shape[-1]
    positions = torch.arange(x.shape[-3], dtype=torch.float64)
    inverse = 1 / theta ** (torch.arange(0, head, 2, dtype=torch.float64) / head)
    angles = torch.cat([positions[:, None] * inverse] * 2, dim=-1)[:, None, :]
    turned = torch.cat((-x[..., head // 2:], x[..., :head // 2]), dim=-1)
    return x * angles.cos() + turned * angles.sin()


@pytest.fixture(scope="module")
def llama_attn():
    program = tndsl.parse(LLAMA_ATTN, "llama_attn.tn")
    model = program.module(["logits", "blocks.1.attn.scores"]).double()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.4, generator=generator)
    return program, model


@pytest.mark.parametrize("length", [6, 4])  # the full Context, and a shorter sequence
def test_paths_through_rotary_and_grouping_sum_to_the_value(llama_attn, length):
    program, model = llama_attn
    tokens = torch.randint(0, 10, (3, length), generator=torch.Generator().manual_seed(4))
    scores = attribute(model, expand_paths(program, "blocks.1.attn.scores"), tokens)
    assert len(scores.values) == 4 and scores.value.shape == (3, 4, length, length)
    assert scores.largest_error < 1e-10
    logits = attribute(model, expand_paths(program, "logits"), tokens)
    assert len(logits.values) == 4 and logits.largest_error < 1e-10
    # The direct QK path, by hand: RoPE on both sides, each query head reading its
    # group's key head (repeat_interleave, as Hugging Face's repeat_kv does).
    w = {k: v.detach() for k, v in model.named_parameters()}
    resid0 = w["embed.W_E"][tokens]
    q = _rope(torch.einsum("bpm,hmf->bphf", resid0, w["blocks.1.attn.W_Q"]), 100.0)
    k = _rope(torch.einsum("bpm,gmf->bpgf", resid0, w["blocks.1.attn.W_K"]), 100.0)
    k = k.repeat_interleave(2, dim=-2)
    direct = torch.einsum("bphe,bshe->bhps", q, k) / 2.0
    torch.testing.assert_close(scores.values["ph: direct, s: direct"], direct,
                               atol=1e-10, rtol=0)


def test_llama_example_paths_read_its_fixed_tensors():
    program = tndsl.load(ROOT / "examples" / "mistral.tn", dims={
        "Context": 6, "Vocab": 10, "Model": 16, "Heads": 4, "KVHeads": 2, "Head": 4,
        "Hidden": 8, "Layers": 2, "Window": 6})
    model = program.module(["logits", "blocks.1.attn.scores", "blocks.1.attn.z"]).double()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.4, generator=generator)
    tokens = torch.randint(0, 10, (2, 5), generator=generator)
    for name in ("blocks.1.attn.scores", "blocks.1.attn.z"):
        expansion = expand_paths(program, name)
        held = {r.name for t in expansion.terms
                for r in tndsl.lang.ir.refs(expansion.program().equation(t.name).rhs)}
        assert {"rotary", "group"} <= held if name.endswith("scores") else "group" in held
        assert attribute(model, expansion, tokens).largest_error < 1e-10
