"""The interpretability workbench (issue 24): named hooks, the decomposing cache, patching,
frozen norms and plots, against independent oracles: Hugging Face's hidden states and
logits, hand-written torch, and exact sums."""
import math

import pytest
import torch

import tndsl
from tndsl.interp import hooks, patching, plots
from tndsl.interp.attribution import attribute
from tndsl.interp.hooks import HookError, intervene, run_with_cache
from tndsl.interp.paths import expand_paths
from tndsl.lang.errors import TnError
from conftest import ROOT
from hf_models import CASES, build, float64_oracle, save, tokens as _tokens

TINY = {"Context": 8, "Vocab": 20, "Model": 16, "Heads": 2}


@pytest.fixture(scope="module")
def attn_only():
    """The two-layer attention-only model (no norms), random weights, float64."""
    torch.manual_seed(0)
    program = tndsl.load(ROOT / "examples" / "attn_only_2l.tn", dims=TINY)
    model = program.module(["logits"]).double()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.5)
    return program, model


def _pair(vocab=20, length=8, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, vocab, (2, length), generator=generator),
            torch.randint(0, vocab, (2, length), generator=generator))


# ---- 1. hooks with names ----------------------------------------------------------------

def test_two_argument_hooks_see_the_name_layer_and_legs(attn_only):
    _, model = attn_only
    seen = []
    with intervene(model, {"blocks.*.attn.pattern": lambda value, hook: seen.append(
            (hook.name, hook.layer, hook.legs, tuple(value.shape)))}):
        model(_pair()[0])
    assert seen == [("blocks.0.attn.pattern", 0, ("h: Heads", "p: Context", "s: Context"),
                     (2, 2, 8, 8)),
                    ("blocks.1.attn.pattern", 1, ("h: Heads", "p: Context", "s: Context"),
                     (2, 2, 8, 8))]


def test_names_take_a_callable_a_glob_or_a_list(attn_only):
    _, model = attn_only
    tokens = _pair()[0]
    _, by_callable = run_with_cache(model, tokens, names=lambda n: n.endswith("scores"))
    _, by_glob = run_with_cache(model, tokens, names="blocks.*.attn.scores")
    _, by_list = run_with_cache(model, tokens, names=["blocks.0.attn.scores",
                                                      "blocks.1.attn.scores"])
    assert list(by_callable) == list(by_glob) == list(by_list) == \
        ["blocks.0.attn.scores", "blocks.1.attn.scores"]
    assert all(torch.equal(by_callable[n], by_list[n]) for n in by_list)
    with pytest.raises(TnError, match="blocks.9.attn"):
        run_with_cache(model, tokens, names="blocks.9.attn.*")


def test_a_hook_returning_the_wrong_shape_names_the_hook_point(attn_only):
    _, model = attn_only
    with pytest.raises(HookError) as info:
        with intervene(model, {"blocks.0.attn.head_out": lambda v: v[..., :3]}):
            model(_pair()[0])
    message = str(info.value)
    assert "blocks.0.attn.head_out[h: Heads, p: Context, m: Model]" in message
    assert "(2, 2, 8, 3)" in message and "(2, 2, 8, 16)" in message
    with pytest.raises(HookError, match="float32"):
        with intervene(model, {"resid1": lambda v: v.float()}):
            model(_pair()[0])


def test_inference_helpers_carry_no_graph_unless_asked(attn_only):
    _, model = attn_only
    output, cache = run_with_cache(model, _pair()[0], names="resid1")
    assert output.grad_fn is None and not output.requires_grad
    assert hooks.run_with_hooks(model, _pair()[0]).grad_fn is None
    assert hooks.run_with_hooks(model, _pair()[0], grad=True).grad_fn is not None


def test_gradient_cache_equals_a_hand_written_backward(attn_only):
    """d metric / d resid1 and d metric / d blocks.1.attn.pattern, from a hand-written
    forward of layer 1 and the unembedding on the cached resid1."""
    _, model = attn_only
    tokens = _pair()[0]
    metric = lambda logits: logits[:, -1, 3].sum() - logits[:, -2, 5].sum()
    _, cache = run_with_cache(model, tokens, names=["resid1", "blocks.1.attn.pattern"],
                              grads=True, metric=metric)
    w = {n: p.detach() for n, p in model.named_parameters()}
    resid1 = cache["resid1"].clone().requires_grad_(True)
    scores = torch.einsum("bpm,hme,hne,bsn->bhps", resid1, w["blocks.1.attn.W_Q"],
                          w["blocks.1.attn.W_K"], resid1) / math.sqrt(8)
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    pattern = torch.softmax(scores.masked_fill(~causal, -math.inf), -1)
    pattern.retain_grad()
    out = torch.einsum("bhps,bsn,hne,hem->bpm", pattern, resid1, w["blocks.1.attn.W_V"],
                       w["blocks.1.attn.W_O"])
    metric((resid1 + out) @ w["unembed.W_U"]).backward()
    torch.testing.assert_close(cache.grads["resid1"], resid1.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(cache.grads["blocks.1.attn.pattern"], pattern.grad,
                               atol=1e-10, rtol=0)


# ---- 2. the cache decomposes, on every family ---------------------------------------------

FAMILIES = {"gpt2": lambda: build("gpt2", n_positions=10), "llama": CASES["llama"],
            "pythia": CASES["pythia"], "qwen2": CASES["qwen2"], "gemma": CASES["gemma"]}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_decompositions_sum_exactly_on_every_family(family, tmp_path):
    model_class, config = FAMILIES[family]()
    config._attn_implementation = "sdpa"
    hf = float64_oracle(save(model_class, config, tmp_path).to(torch.float64))
    model = tndsl.from_pretrained(tmp_path, torch.float64,
                                  context=10 if family == "gpt2" else None)
    tokens = _tokens(config.vocab_size)
    with torch.no_grad():
        expected = hf(tokens, output_hidden_states=True)
    logits, cache = run_with_cache(model, tokens)
    assert (logits - expected.logits).abs().max() < 1e-10

    # accumulated_resid: the stream at the start of each layer is HF's hidden state.
    states, labels = cache.accumulated_resid(2, return_labels=True)
    assert len(labels) == 3
    for layer in range(2):
        assert (states[layer] - expected.hidden_states[layer]).abs().max() < 1e-10
    # decompose_resid: components named by path, summing to the stream there.
    stack, names = cache.decompose_resid(return_labels=True)
    assert names[-4:] == ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]
    assert names[0] == "embed" and (names[1] == "pos_embed") == (family == "gpt2")
    final = cache.accumulated_resid()[-1]
    assert (stack.sum(0) - final).abs().max() < 1e-12
    assert (cache.decompose_resid(1).sum(0) - expected.hidden_states[1]).abs().max() < 1e-10
    # stack_head_results: each head's z @ W_O by hand (HF's o_proj / c_proj columns).
    heads, head_labels = cache.stack_head_results(1, return_labels=True)
    assert head_labels == [f"blocks.0.attn.h{k}" for k in range(4)]
    z = cache["blocks.0.attn.z"]                           # [batch, p, h, e]
    out_proj = {"gpt2": lambda: hf.transformer.h[0].attn.c_proj.weight.T,
                "pythia": lambda: hf.gpt_neox.layers[0].attention.dense.weight}.get(
        family, lambda: hf.model.layers[0].self_attn.o_proj.weight)().detach()
    d = z.shape[-1]
    for h in range(4):
        by_hand = z[..., h, :] @ out_proj[:, h * d:(h + 1) * d].T
        assert (heads[h] - by_hand).abs().max() < 1e-10
    assert (heads.sum(0) + cache.head_bias("blocks.0.attn") - cache["blocks.0.attn.out"]
            ).abs().max() < 1e-12
    # apply_ln_to_stack: the frozen final norm of the parts sums to the norm of the whole.
    normed = cache.apply_ln_to_stack(stack)
    x = final
    if family in ("gpt2", "pythia"):
        by_hand = torch.nn.functional.layer_norm(x, (x.shape[-1],), eps=1e-5)
    else:
        by_hand = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config.rms_norm_eps)
    assert (normed.sum(0) - by_hand).abs().max() < 1e-12
    # logit_attrs: with the readout's biases, direct logit attribution gives the logits.
    targets = torch.roll(tokens, -1, dims=-1)
    attrs = cache.logit_attrs(normed, targets)
    assert attrs.shape == (len(names),) + tuple(tokens.shape)
    picked = expected.logits.gather(-1, targets[..., None])[..., 0]
    bias = cache.logit_bias()
    bias = bias.expand(expected.logits.shape).gather(-1, targets[..., None])[..., 0]
    assert (attrs.sum(0) + bias - picked).abs().max() < 1e-10
    # logit_lens: the last state gives the logits; the first is the embedding read out.
    lens = cache.logit_lens()
    assert (lens[-1] - expected.logits).abs().max() < 1e-10


def test_a_users_own_file_decomposes_without_any_table():
    """A parallel-residual model with its own names: two heads-blocks and a 'memory' term."""
    text = """
dim Context = 6
dim Vocab = 11
dim Model = 8
dim Heads = 2
dim Head = 4
input ids[p: Context, v: onehot Vocab]
param emb.table[v: Vocab, m: Model]
param readout[m: Model, v: Vocab]
block Mixer(x[p: Context, m: Model]) -> [p: Context, m: Model] {
    param A[h: Heads, m: Model, e: Head]
    param B[h: Heads, e: Head, m: Model]
    weights[h, p, s] = softmax[s](x[p, m] * A[h, m, e] * A[h, n, e] * x[s, n] where s <= p)
    return weights[h, p, s] * x[s, n] * A[h, n, e] * B[h, e, m]
}
stream0[p, m] = ids[p, v] * emb.table[v, m]
stream1[p, m] = stream0[p, m] + Mixer(stream0) as layers.0.mix
stream2[p, m] = stream1[p, m] + Mixer(stream1) as layers.1.mix
out[p, v] = stream2[p, m] * readout[m, v]
"""
    program = tndsl.parse(text, "mine.tn")
    torch.manual_seed(1)
    model = program.module().double()
    tokens = torch.randint(0, 11, (3, 6))
    logits, cache = run_with_cache(model, tokens)
    stack, names = cache.decompose_resid(return_labels=True)
    assert names == ["emb", "layers.0.mix", "layers.1.mix"]
    w = {n: p.detach() for n, p in model.named_parameters()}
    assert (stack[0] - w["emb.table"][tokens]).abs().max() == 0
    assert (stack.sum(0) - cache["stream2"]).abs().max() < 1e-12
    heads = cache.stack_head_results()
    assert heads.shape == (4, 3, 6, 8)
    assert (heads[:2].sum(0) - cache["layers.0.mix.out"]).abs().max() < 1e-12
    attrs = cache.logit_attrs(cache.apply_ln_to_stack(stack), 4)   # no norm: as they are
    assert (attrs.sum(0) - logits[..., 4]).abs().max() < 1e-12


# ---- 4. patching --------------------------------------------------------------------------

def _metric(logits):
    return logits[:, -1, 3].sum() - logits[:, -1, 7].sum()


def test_activation_patching_sweep_equals_patching_by_hand(attn_only):
    _, model = attn_only
    clean, corrupted = _pair()
    sweep = patching.activation_patching(model, clean, corrupted, _metric,
                                         "blocks.*.attn.head_out", over="Heads", batch_size=3)
    assert sweep.values.shape == (2, 2) and sweep.legs == ("Heads",)
    _, cache = run_with_cache(model, clean, names="blocks.*.attn.head_out")
    for k, name in enumerate(["blocks.0.attn.head_out", "blocks.1.attn.head_out"]):
        for h in range(2):
            def patch(value, h=h, name=name):
                value = value.clone()
                value[:, h] = cache[name][:, h]
                return value
            with torch.no_grad(), intervene(model, {name: patch}):
                assert abs(float(_metric(model(corrupted))) - float(sweep.values[k, h])) < 1e-10
    with torch.no_grad():
        assert abs(sweep.clean - float(_metric(model(clean)))) < 1e-12
    positions = patching.activation_patching(model, clean, corrupted, _metric, ["resid1"],
                                             over="p")
    assert positions.values.shape == (1, 8)
    assert isinstance(sweep.plot(), plots_figure())


def plots_figure():
    from matplotlib.figure import Figure
    return Figure


def test_attribution_patching_is_exact_where_the_metric_is_linear(attn_only):
    """The logits are linear in blocks.1.attn.out and in resid2: there the estimate is
    activation patching itself, entry by entry; through a softmax it is not."""
    _, model = attn_only
    clean, corrupted = _pair()
    names = ["blocks.1.attn.out", "resid2", "blocks.0.attn.out"]
    exact = patching.activation_patching(model, clean, corrupted, _metric, names, over="p")
    estimate = patching.attribution_patching(model, clean, corrupted, _metric, names, over="p")
    assert exact.points == estimate.points == ("blocks.0.attn.out", "blocks.1.attn.out",
                                                "resid2")      # in forward order
    assert (exact.values[1:] - estimate.values[1:]).abs().max() < 1e-9
    assert (exact.values[0] - estimate.values[0]).abs().max() > 1e-3


def test_path_patching_the_key_side_equals_a_hand_written_intervention(attn_only):
    """Only blocks.0.attn -> blocks.1.attn's key side corrupted: layer 1's keys read
    resid1 - attn0(clean) + attn0(corrupted), its queries and values the clean resid1."""
    program, model = attn_only
    clean, corrupted = _pair()
    expansion = expand_paths(program, "blocks.1.attn.scores")
    patched = patching.path_patching(model, clean, corrupted, expansion, "blocks.0.attn",
                                     side="s")
    _, c = run_with_cache(model, clean)
    _, k = run_with_cache(model, corrupted)
    w = {n: p.detach() for n, p in model.named_parameters()}
    keys_from = c["resid1"] - c["blocks.0.attn.out"] + k["blocks.0.attn.out"]

    def scores(_):
        q = torch.einsum("bpm,hme->bhpe", c["resid1"], w["blocks.1.attn.W_Q"])
        key = torch.einsum("bsm,hme->bhse", keys_from, w["blocks.1.attn.W_K"])
        return torch.einsum("bhpe,bhse->bhps", q, key) / math.sqrt(8)
    with torch.no_grad(), intervene(model, {"blocks.1.attn.scores": scores}):
        by_hand = model(clean)
    assert (patched - by_hand).abs().max() < 1e-10
    with torch.no_grad():
        assert (patched - model(clean)).abs().max() > 1e-3
    with pytest.raises(TnError, match="no path of `blocks.1.attn.scores` reads"):
        patching.path_patching(model, clean, corrupted, expansion, "blocks.1.attn")


def test_edge_attribution_is_exact_for_the_logit_paths(attn_only):
    """The metric is linear in the logits, which are the sum of their paths: scoring a
    path by gradient x difference equals swapping that one path's value."""
    program, model = attn_only
    clean, corrupted = _pair()
    expansion = expand_paths(program, "logits")
    scores = patching.edge_attribution(model, clean, corrupted, _metric, expansion)
    on_clean = attribute(model, expansion, clean)
    on_corrupted = attribute(model, expansion, corrupted)
    with torch.no_grad():
        base = model(corrupted)
    for label, score in scores.items():
        swapped = base + on_clean.contribution(label) - on_corrupted.contribution(label)
        assert abs(float(score.sum()) - float(_metric(swapped) - _metric(base))) < 1e-9
    assert scores["blocks.0.attn->blocks.1.attn"].shape == (2, 2)  # per pair of heads
    assert isinstance(plots.path_bars(scores), plots_figure())


# ---- 5. paths through norms ---------------------------------------------------------------

def test_frozen_norm_paths_are_proven_and_sum_to_the_logits(tmp_path):
    from tndsl.verify import prove_all
    model_class, config = CASES["llama"]()
    save(model_class, config, tmp_path)
    model = tndsl.from_pretrained(tmp_path, torch.float64)
    program = model.tndsl_program
    expansion = expand_paths(program, "logits", freeze=["norms"])
    labels = [t.label for t in expansion.terms]
    assert labels[:3] == ["direct", "blocks.0.attn", "blocks.0.mlp"]
    assert "blocks.0.attn->blocks.1.attn" in labels and len(labels) == 16
    assert [n.param for n in expansion.frozen][-1] == "ln_final.frozen_scale"
    assert prove_all(expansion.program())[-1].status == "proven"
    tokens = _tokens(config.vocab_size)
    result = attribute(model, expansion, tokens, inputs={"tokens": tokens})
    with torch.no_grad():
        assert (result.total - model(tokens)).abs().max() < 1e-10
    assert isinstance(plots.path_bars(result), plots_figure())


def test_a_loop_rebound_name_is_spelled_as_text_names_it_or_refused():
    program = tndsl.load(ROOT / "examples" / "gpt2_small.tn", dims={**TINY, "Layers": 2})
    expansion = expand_paths(program, "resid@2")
    assert expansion.name == "resid" and expansion.check in expansion.source
    expansion.program()                          # the written text checks
    with pytest.raises(TnError) as info:
        expand_paths(program, "resid@1")
    assert "rebinds" in str(info.value) and "gpt2_small.tn:" in str(info.value)
    with pytest.raises(TnError, match="norms"):
        expand_paths(program, "logits", freeze=["everything"])


# ---- 6. plots -------------------------------------------------------------------------------

def test_pattern_plot_returns_a_figure_with_a_panel_per_head(attn_only):
    _, model = attn_only
    _, cache = run_with_cache(model, _pair()[0], names="blocks.0.attn.pattern")
    figure = plots.pattern_plot(cache["blocks.0.attn.pattern"][0])
    assert isinstance(figure, plots_figure())
    assert sum(ax.get_title().startswith("head") for ax in figure.axes) == 2
    with pytest.raises(TnError, match="index the batch"):
        plots.pattern_plot(cache["blocks.0.attn.pattern"])


# ---- 3. per-head results ------------------------------------------------------------------

def test_the_per_head_result_is_a_hook_point_equal_to_z_times_w_o():
    """`blocks.0.attn.result[p, h, m]`, derived from the output equation: cached it is
    z[h] @ W_O[h] by hand; patching it per head is patching that head's z; its gradient
    is the output's, per head; hooking nothing else, the forward is untouched."""
    program = tndsl.load(ROOT / "examples" / "gpt2_small.tn", dims={**TINY, "Layers": 2})
    torch.manual_seed(2)
    model = program.module().double()
    clean, corrupted = _pair()
    assert hooks.select(model, "*.result") == ["blocks.0.attn.result", "blocks.1.attn.result"]
    assert "blocks.0.attn.result" not in hooks.hook_names(model)   # no module, no cost
    out, cache = run_with_cache(model, clean, names=["blocks.0.attn.result", "blocks.0.attn.z"])
    with torch.no_grad():
        assert torch.equal(out, model(clean))
    w = {n: p.detach() for n, p in model.named_parameters()}
    by_hand = torch.einsum("bphe,hem->bphm", cache["blocks.0.attn.z"], w["blocks.0.attn.W_O"])
    assert (cache["blocks.0.attn.result"] - by_hand).abs().max() < 1e-12
    by_result = patching.activation_patching(model, clean, corrupted, _metric,
                                             "blocks.*.attn.result", over="Heads")
    by_z = patching.activation_patching(model, clean, corrupted, _metric, "blocks.*.attn.z",
                                        over="Heads")
    assert by_result.values.shape == (2, 2)
    assert (by_result.values - by_z.values).abs().max() < 1e-10
    _, grads = run_with_cache(model, clean, names=["blocks.1.attn.result", "blocks.1.attn.out"],
                              grads=True, metric=_metric)
    expected = grads.grads["blocks.1.attn.out"][..., None, :].expand(2, 8, 2, 16)
    assert (grads.grads["blocks.1.attn.result"] - expected).abs().max() < 1e-12


@pytest.mark.slow  # reason: loads the study and runs its ~20 forwards in float64 (~12 s)
def test_the_tutorials_induction_numbers():
    """docs/tutorial.md section 12 quotes examples/workbench.py on the study's saved
    model: attribution patching ranks the heads as activation patching does, the layer-1
    rows exactly, and corrupting the K-composition path alone removes most of the metric
    while the Q side changes nothing."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("workbench", ROOT / "examples" / "workbench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main([])
    assert result["spearman"] > 0.95 and result["pearson"] > 0.99
    assert (result["activation"][1] - result["attribution"][1]).abs().max() < 1e-9
    assert int(result["activation"][1].argmax()) == 1         # the study's induction head
    assert result["k_side"] < 0.2 * result["clean_metric"]
    assert abs(result["q_side"] - result["clean_metric"]) < 0.05 * result["clean_metric"]
    assert int(torch.as_tensor(result["k_comp_edges"]).argmax()) == 2   # previous-token head


def test_backward_hooks_see_and_replace_the_gradient(attn_only):
    """Zeroing d loss / d resid1 cuts every gradient to layer 0's weights; the gradient a
    backward hook sees is the one the gradient cache records."""
    _, model = attn_only
    tokens = _pair()[0]
    seen = {}
    with hooks.intervene_backward(model, {"resid1": lambda g, hook: seen.setdefault(
            hook.name, g.clone())}):
        _metric(model(tokens)).backward()
    _, cache = run_with_cache(model, tokens, names="resid1", grads=True, metric=_metric)
    assert (seen["resid1"] - cache.grads["resid1"]).abs().max() < 1e-12
    model.zero_grad()
    with hooks.intervene_backward(model, {"resid1": lambda g: torch.zeros_like(g)}):
        _metric(model(tokens)).backward()
    w_q0 = dict(model.named_parameters())["blocks.0.attn.W_Q"]
    assert w_q0.grad is not None and w_q0.grad.abs().max() == 0
    assert dict(model.named_parameters())["blocks.1.attn.W_Q"].grad.abs().max() > 0
    model.zero_grad()


def test_cli_paths_freeze_norms_and_rebound_names(tmp_path):
    from test_paths import run
    out = tmp_path / "llama_paths.tn"
    result = run("paths", "examples/llama.tn", "logits", "--freeze", "norms", "--dim",
                 "Layers=1", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "4 paths of logits, check logits_paths, 3 norms frozen" in result.stdout
    text = out.read_text()
    assert "param frozen_scale[p: Context] init ones" in text
    assert "return (frozen_scale[p] * x[p, m]) * w[m]" in text
    again = run("paths", "examples/llama.tn", "logits", "--freeze", "norms", "--dim", "Layers=1")
    assert again.stdout == text                                   # deterministic
    refused = run("paths", "examples/gpt2_small.tn", "resid@1", "--dim", "Layers=2")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "gpt2_small.tn:63:5: error: `resid@1` is a version of `resid`" in refused.stderr
    unknown = run("paths", "examples/gpt2_small.tn", "logits", "--freeze", "weights")
    assert unknown.returncode == 2 and "norms" in unknown.stderr
