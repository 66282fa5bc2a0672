"""The induction study, shortened (1,200 steps, fixed seed) with bars set for that length;
the full study's numbers are in examples/induction/report. Its claims are checked on the
real trained weights, and its saved weights are re-read by a plain-torch transformer."""
import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tndsl.interp import circuits
from tndsl.lang.errors import TnError
from tndsl.interp.induction import Config, diagonal_score, repeated_batch, run
from conftest import ROOT

CONFIG = Config(steps=1200, eval_sequences=128)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("induction")
    return out, run(out, CONFIG, stream=None)


def test_a_previous_token_head_and_an_induction_head_form(report):
    _, r = report
    layer, prev = r["previous_token_head"]
    _, ind = r["induction_head"]
    assert layer == 0 and r["heads"]["layer0"]["previous_token"][prev] >= 0.55
    assert r["heads"]["layer1"]["induction"][ind] >= 0.55
    assert r["heads"]["layer1"]["copying"][ind] >= 0.9


def test_the_three_conditions_hold(report):
    _, r = report
    c = r["conditions"]
    assert c["1.1"]["holds"] and c["1.1"]["score"] > c["1.1"]["bar"]
    # token match: the induction head's diagonal beats every random draw
    assert c["1.2"]["heads"] == [r["previous_token_head"], r["induction_head"]]
    assert c["1.2"]["z"] > c["1.2"]["baseline_max"] and c["1.2"]["holds"]
    assert abs(c["1.2"]["baseline_mean"]) < 0.5
    assert c["2.1"]["holds"] and c["2.1"]["score"] > c["2.1"]["bar"]


def test_ablating_the_previous_token_head_breaks_induction(report):
    _, r = report
    a = r["ablation"]
    prev = r["previous_token_head"][1]
    ablated = a["heads"][prev]
    assert ablated["head"] == prev
    assert ablated["best_induction"] < 0.5 * a["baseline"]["best_induction"]
    assert ablated["repeated_loss"] > a["baseline"]["repeated_loss"]
    # it is the layer-0 head whose loss hurts the repeated half most
    assert ablated["repeated_loss"] == max(row["repeated_loss"] for row in a["heads"])


def test_k_composition_from_the_previous_token_head_beats_chance(report):
    _, r = report
    prev, ind = r["previous_token_head"][1], r["induction_head"][1]
    assert r["composition"]["k"][prev][ind] > r["composition"]["baseline"]


def test_the_generated_qk_expansion_sums_to_the_scores_and_is_proven(report):
    _, r = report
    q = r["qk_expansion"]
    assert q["paths"] == {"no": "scores.p_direct.s_direct",
                          "K": "scores.p_direct.s_blocks_0_attn",
                          "Q": "scores.p_blocks_0_attn.s_direct",
                          "K&Q": "scores.p_blocks_0_attn.s_blocks_0_attn"}
    assert q["largest_error"] < 1e-10
    assert abs(sum(q["terms_on_induction_stripe"].values()) - q["actual_on_induction_stripe"]) < 1e-8
    assert q["proof"]["status"] == "proven"
    terms = q["terms_on_induction_stripe"]
    assert terms["K"] == max(terms.values())          # K-composition carries the stripe
    per_head = q["k_term_by_layer0_head"]              # ... through the previous-token head
    assert max(range(len(per_head)), key=per_head.__getitem__) == r["previous_token_head"][1]
    assert abs(sum(per_head) - terms["K"]) < 1e-8


def test_saved_weights_reproduce_the_scores_in_plain_torch(report):
    """Read weights.safetensors and config.json and recompute the previous-token and
    induction scores with a hand-written transformer (no tndsl model involved)."""
    out, r = report
    w = {k: v.double() for k, v in load_file(str(out / "weights.safetensors")).items()}
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 1200
    assert config["model_source"] == (ROOT / "examples" / "attn_only_2l.tn").read_text()
    context, heads = config["context"], config["heads"]
    d_head = config["model"] // heads
    # the evaluation set: sequences repeated twice, from the seed + 1 generator
    tokens, _ = repeated_batch(config["eval_sequences"], context, config["vocab"],
                               torch.Generator().manual_seed(config["seed"] + 1),
                               period=context // 2)
    causal = torch.ones(context, context, dtype=torch.bool).tril()

    def attention(x, layer):
        W = {k: w[f"blocks.{layer}.attn.W_{k}"] for k in "QKVO"}
        q = torch.einsum("bpm,hme->bhpe", x, W["Q"])
        k = torch.einsum("bsm,hme->bhse", x, W["K"])
        pattern = (q @ k.transpose(-1, -2) / math.sqrt(d_head)).masked_fill(
            ~causal, float("-inf")).softmax(-1)
        v = torch.einsum("bsm,hme->bhse", x, W["V"])
        return pattern, torch.einsum("bhps,bhse,hem->bpm", pattern, v, W["O"])
    resid0 = w["embed.W_E"][tokens] + w["pos_embed.W_pos"]
    pattern0, out0 = attention(resid0, 0)
    pattern1, _ = attention(resid0 + out0, 1)
    half = context // 2
    positions, stripe = torch.arange(1, context), torch.arange(half, context)
    previous = pattern0[:, :, positions, positions - 1].mean(dim=(0, 2))
    induction = pattern1[:, :, stripe, stripe - half + 1].mean(dim=(0, 2))
    assert torch.allclose(previous, torch.tensor(r["heads"]["layer0"]["previous_token"],
                                                 dtype=torch.float64), atol=1e-5)
    assert torch.allclose(induction, torch.tensor(r["heads"]["layer1"]["induction"],
                                                  dtype=torch.float64), atol=1e-5)


def test_weights_re_run_the_analysis_without_training(report, tmp_path):
    out, r = report
    result = subprocess.run([sys.executable, "-m", "tndsl", "study", "induction", "--weights",
                             str(out / "weights.safetensors"), "-o", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    again = json.loads((tmp_path / "report.json").read_text())
    assert again["training"] == {"loaded_from": str(out / "weights.safetensors"), "steps": 1200}
    assert again["induction_head"] == r["induction_head"]
    for key in ("previous_token", "induction"):
        assert again["heads"]["layer0"][key] == pytest.approx(r["heads"]["layer0"][key], abs=1e-9)
    assert again["ablation"]["heads"][0]["repeated_loss"] == pytest.approx(
        r["ablation"]["heads"][0]["repeated_loss"], abs=1e-9)
    assert (tmp_path / "weights.safetensors").exists() and "not retrained" in \
        (tmp_path / "report.md").read_text()


def test_weights_without_their_config_are_a_located_error(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(TnError, match="config.json"):
        run(tmp_path / "out", weights=tmp_path / "weights.safetensors", stream=None)


def test_the_diagonal_score_matches_the_materialised_matrix():
    generator = torch.Generator().manual_seed(3)
    a, b, c = (torch.randn(s, generator=generator, dtype=torch.float64)
               for s in ((40, 6), (6, 5), (5, 40)))
    matrix = circuits.NetworkMatrix.chain(a, b, c)
    dense = a @ b @ c  # the oracle: plain torch on the full 40 × 40 matrix
    z = (dense.diagonal().mean() - dense.mean()) / dense.std(unbiased=False)
    top1 = (dense.argmax(dim=1) == torch.arange(40)).double().mean()
    score = diagonal_score(matrix, chunk=7)
    assert score["z"] == pytest.approx(float(z), abs=1e-10)
    assert score["top1"] == pytest.approx(float(top1))
    eye = torch.eye(40, dtype=torch.float64)
    diagonal = circuits.NetworkMatrix.chain(eye * 3 + 0.1, eye)
    assert diagonal_score(diagonal)["top1"] == 1.0


def test_the_report_is_written(report):
    out, r = report
    # (its time budget, 3 CPU minutes for the whole study, is kept by bench/induction.py:
    # a timed assertion here failed CI on a loaded machine)
    data = json.loads((out / "report.json").read_text())
    assert data["induction_head"] == r["induction_head"] and data["training"]["steps"] == 1200
    assert set(data["conditions"]) == {"1.1", "1.2", "2.1"}
    text = (out / "report.md").read_text()
    for section in ("## The three conditions", "## Causal check", "## K-composition",
                    "## The QK expansion", "proven"):
        assert section in text
    for name in ("attention_patterns.png", "k_composition.png", "loss.png", "qk_expansion.png",
                 "ablation.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name


def test_the_reads_of_the_patterns_compose_with_a_callers_hook_on_them():
    # attention_scores reads both layers' patterns through hooks; a caller's hook on the
    # same name (here a uniform causal pattern for layer 1) used to be replaced by the read.
    import tndsl
    from tndsl.interp.hooks import intervene, replace
    from tndsl.interp.induction import attention_scores
    program = tndsl.load(ROOT / "examples" / "attn_only_2l.tn",
                         dims={"Context": 8, "Vocab": 10, "Model": 16, "Heads": 2})
    model = program.module(["logits"]).double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.4, generator=generator)
    tokens = torch.randint(0, 10, (3, 4), generator=generator).repeat(1, 2)
    uniform = torch.ones(8, 8, dtype=torch.float64).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    calls = []

    def flatten(value):
        calls.append(value.shape)
        return torch.broadcast_to(uniform, value.shape)

    scores = attention_scores(model, tokens, {"blocks.1.attn.pattern": [flatten]})
    assert calls == [(3, 2, 8, 8)]  # the caller's hook ran, once
    # The read saw the pattern the model used: the uniform one, 1/(p+1) per key.
    previous = [float((1 / torch.arange(2, 9, dtype=torch.float64)).mean())] * 2
    assert scores["heads"]["layer1"]["previous_token"] == pytest.approx(previous, abs=1e-12)
    # ... and the loss is the loss under that hook alone (plain intervene, plain torch).
    with torch.no_grad(), intervene(model, {"blocks.1.attn.pattern": replace(uniform)}):
        logits = model(tokens)
    expected = torch.nn.functional.cross_entropy(logits[:, 4:-1].reshape(-1, 10),
                                                 tokens[:, 5:].reshape(-1))
    assert scores["repeated_loss"] == pytest.approx(float(expected), abs=1e-12)
    # A single callable works too.
    single = attention_scores(model, tokens, {"blocks.1.attn.pattern": flatten})
    assert single == scores and len(calls) == 2
