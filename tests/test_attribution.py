"""Path attribution: every path evaluated from the model's cached activations, checked
against a hand-written plain-torch transformer, summing to the model's value."""
import math

import pytest
import torch

import tndsl
from tndsl.attribution import attribute
from tndsl.errors import TnError
from tndsl.paths import expand_paths
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
