"""Sparse autoencoders: the compiled `.tn` SAE against a hand-written torch SAE with the
same weights (SAELens's formulas, written here), spliced into a model, and steered."""
import json

import pytest
import torch
from safetensors.torch import save_file

import tndsl
from tndsl.interp import sae as saes
from tndsl.interp.hooks import hook_names, intervene, run_with_cache

D_IN, D_SAE = 16, 40
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def _weights(architecture, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": torch.randn(D_IN, D_SAE, generator=g, dtype=torch.float64) * 0.5,
         "W_dec": torch.randn(D_SAE, D_IN, generator=g, dtype=torch.float64) * 0.5,
         "b_enc": torch.randn(D_SAE, generator=g, dtype=torch.float64) * 0.3,
         "b_dec": torch.randn(D_IN, generator=g, dtype=torch.float64) * 0.3}
    if architecture == "jumprelu":
        w["threshold"] = torch.rand(D_SAE, generator=g, dtype=torch.float64)
    return w


def _by_hand(w, architecture, k, x, subtract=True):
    """The SAE as SAELens computes it."""
    pre = (x - w["b_dec"] if subtract else x) @ w["W_enc"] + w["b_enc"]
    if architecture == "standard":
        acts = torch.relu(pre)
    elif architecture == "jumprelu":
        acts = torch.relu(pre) * (pre > w["threshold"])
    else:
        top = pre.topk(k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    return acts, acts @ w["W_dec"] + w["b_dec"]


def _save(folder, architecture, cfg_extra=None, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    w = _weights(architecture, seed)
    save_file(w, str(folder / "sae_weights.safetensors"))
    cfg = {"architecture": architecture, "d_in": D_IN, "d_sae": D_SAE,
           "hook_name": "blocks.0.hook_resid_post", "apply_b_dec_to_input": True,
           **({"k": 5} if architecture == "topk" else {}), **(cfg_extra or {})}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return w


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
def test_compiled_sae_equals_the_hand_written_one(architecture, tmp_path):
    w = _save(tmp_path, architecture)
    sae = saes.load(tmp_path)
    assert sae.cfg.hook_name == "blocks.0.hook_resid_post"
    x = torch.randn(3, 7, D_IN, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    acts, recon = _by_hand(w, architecture, 5, x)
    assert (acts > 0).any() and (acts == 0).any()
    assert (sae.encode(x) - acts).abs().max().item() < 1e-12
    assert (sae(x) - recon).abs().max().item() < 1e-12
    assert (sae.decode(acts) - recon).abs().max().item() < 1e-12
    if architecture == "topk":
        assert ((sae.encode(x) != 0).sum(-1) <= 5).all()


def test_the_sae_is_a_diagram_checked_drawn_verified(tmp_path):
    _save(tmp_path, "jumprelu")
    sae = saes.load(tmp_path)
    program = sae.program
    assert {p.name for p in program.params} == \
        {"sae.W_enc", "sae.b_enc", "sae.W_dec", "sae.b_dec", "sae.threshold"}
    assert "step" in program.render("sae.features").source
    assert program.verify_compiled().ok
    text = (ROOT / "examples" / "sae.tn").read_text()
    for block in saes.BLOCKS.values():  # the example file holds the same blocks
        assert block in text


def test_cfg_variants_and_errors(tmp_path):
    _save(tmp_path / "v6", "topk", {"architecture": "topk", "hook_name": None,
                                    "metadata": {"hook_name": "blocks.0.out"}})
    assert saes.load(tmp_path / "v6").cfg.hook_name == "blocks.0.out"
    _save(tmp_path / "old", "standard", {"architecture": None, "activation_fn_str": "relu"})
    assert saes.load(tmp_path / "old").cfg.architecture == "standard"
    _save(tmp_path / "bad", "gated", {"architecture": "gated"})
    with pytest.raises(saes.SAEError, match="'gated' is not supported; supported: standard"):
        saes.load(tmp_path / "bad")
    w = _save(tmp_path / "shape", "standard")
    w["W_dec"] = w["W_dec"][:-1]
    save_file(w, str(tmp_path / "shape" / "sae_weights.safetensors"))
    with pytest.raises(saes.SAEError, match="W_dec` has shape"):
        saes.load(tmp_path / "shape")
    with pytest.raises(saes.SAEError, match="cannot read"):
        saes.load(tmp_path / "nowhere")


def _model():
    program = tndsl.load(ROOT / "examples" / "gpt2_small.tn",
                         dims={"Vocab": 50, "Model": D_IN, "Heads": 4, "Layers": 2,
                               "Context": 16})
    model = program.module().double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.4, generator=torch.Generator().manual_seed(2))
    return model


def test_attached_with_its_error_term_the_logits_do_not_change(tmp_path):
    _save(tmp_path, "jumprelu")
    sae, model = saes.load(tmp_path), _model()
    tokens = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = model(tokens)
        with saes.attach(model, None, sae, keep_error=True) as attached:
            assert attached.hook_name == "blocks.0.out"  # from TransformerLens's spelling
            assert "blocks.0.out.sae.features" in hook_names(model)
            kept = model(tokens)
        assert (kept - plain).abs().max().item() < 1e-12
        assert "blocks.0.out.sae.features" not in hook_names(model)  # removed
        assert torch.equal(model(tokens), plain)


def test_attached_without_error_the_reconstruction_replaces_the_activation(tmp_path):
    w = _save(tmp_path, "standard")
    sae, model = saes.load(tmp_path), _model()
    tokens = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with intervene(model, {"blocks.0.out": lambda x: _by_hand(w, "standard", 0, x)[1]}):
            expected = model(tokens)
        with saes.attach(model, "blocks.0.out", sae):
            actual, cache = run_with_cache(model, tokens, names=["blocks.0.out.sae.features"])
    assert (actual - expected).abs().max().item() < 1e-12
    _, resid = run_with_cache(model, tokens, names=["blocks.0.out"])
    acts, _ = _by_hand(w, "standard", 0, resid["blocks.0.out"])
    assert (cache["blocks.0.out.sae.features"] - acts).abs().max().item() < 1e-12
    assert (saes.feature_activations(model, sae, tokens) - acts).abs().max().item() < 1e-12


def test_steering_one_feature_moves_the_output_along_its_decoder_row(tmp_path):
    w = _save(tmp_path, "standard")
    sae, model = saes.load(tmp_path), _model()
    tokens = torch.randint(0, 50, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, resid = run_with_cache(model, tokens, names=["blocks.0.out"])
        acts, _ = _by_hand(w, "standard", 0, resid["blocks.0.out"])
        delta = (10.0 - acts[..., 7:8]) * w["W_dec"][7]          # the clamp's effect
        with intervene(model, {"blocks.0.out": lambda x: x + delta}):
            expected = model(tokens)
        with saes.steer(model, sae, feature=7, value=10.0):
            steered = model(tokens)
            generated = tndsl.generate(model, tokens, 4, stop_at_eos=False)
        plain = tndsl.generate(model, tokens, 4, stop_at_eos=False)
    assert (steered - expected).abs().max().item() < 1e-10
    assert generated.tokens.shape == plain.tokens.shape == (1, 13)
    with pytest.raises(saes.SAEError, match="feature must be an index"):
        saes.steer(model, sae, feature=D_SAE, value=1.0)
