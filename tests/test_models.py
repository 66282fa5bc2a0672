"""Compiled models against code tndsl did not write: Hugging Face GPT-2, a hand-written
attention-only transformer, and the reference evaluator's autograd."""
import math

import pytest
import torch
import transformers  # the GPT-2 oracle; a test dependency (pyproject's test extra)

import tndsl
from tndsl.verify.numeric import random_tensors
from tndsl.verify.reference import Reference
from tndsl.models.weights import WeightsError, load_hf_gpt2, load_safetensors, load_state, \
    save_safetensors
from conftest import ROOT


GPT2_DIMS = {"Context": 32, "Vocab": 100, "Model": 64, "Heads": 4, "Layers": 2}


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A small random GPT-2 saved as Hugging Face saves it, and the model itself."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100,
                                     n_positions=32, bos_token_id=0, eos_token_id=0,
                                     attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF starts biases at 0 and norms at 1; make every weight count
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    folder = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(folder)
    return folder, model


def compiled_gpt2(state):
    module = tndsl.load(ROOT / "examples" / "gpt2_small.tn", dims=GPT2_DIMS).module()
    load_state(module, state)
    return module.eval()


def test_gpt2_equals_hugging_face_in_float32_and_float64(hf_checkpoint):
    folder, hf = hf_checkpoint
    module = compiled_gpt2(load_hf_gpt2(folder))
    tokens = torch.randint(0, 100, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (module(tokens) - hf(tokens).logits).abs().max() < 1e-4
        assert (module.double()(tokens) - hf.double()(tokens).logits).abs().max() < 1e-10
    hf.float()


def test_gpt2_loads_from_pytorch_model_bin_without_unpickling_code(hf_checkpoint, tmp_path):
    folder, hf = hf_checkpoint
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    from_bin, from_safetensors = load_hf_gpt2(tmp_path), load_hf_gpt2(folder)
    assert from_bin.keys() == from_safetensors.keys()
    assert all(torch.equal(from_bin[k], from_safetensors[k]) for k in from_bin)


def test_a_pickle_with_code_in_it_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))
    (tmp_path / "config.json").write_text('{"n_layer": 1, "n_head": 1, "n_embd": 2, '
                                          '"vocab_size": 3, "n_positions": 4}')
    torch.save({"wte.weight": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="safely"):
        load_hf_gpt2(tmp_path)


def test_checkpoint_of_another_shape_lists_what_differs(hf_checkpoint):
    folder, _ = hf_checkpoint
    module = tndsl.load(ROOT / "examples" / "gpt2_small.tn",
                        dims={**GPT2_DIMS, "Layers": 3, "Model": 32}).module()
    with pytest.raises(WeightsError) as info:
        load_state(module, load_hf_gpt2(folder))
    message = info.value.message
    assert "missing: blocks.2.attn.W_K" in message
    assert "shape of blocks.0.attn.W_K: expected (4, 32, 8), got (4, 64, 16)" in message


def test_safetensors_round_trip(tmp_path):
    program = tndsl.load(ROOT / "examples" / "attn_only_2l.tn")
    first, second = program.module(), program.module()
    save_safetensors(first, tmp_path / "w.safetensors")
    load_safetensors(second, tmp_path / "w.safetensors")
    tokens = torch.randint(0, 64, (32,))
    assert torch.equal(first(tokens), second(tokens))


# ---- the two-layer attention-only transformer, written by hand --------------------------

def hand_written_attn_only(weights, tokens):
    """TransformerLens conventions: scores / sqrt(d_head), causal mask, no layer norm."""
    resid = weights["embed.W_E"][tokens] + weights["pos_embed.W_pos"]
    n = tokens.shape[-1]
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    for layer in range(2):
        w = {k: weights[f"blocks.{layer}.attn.{k}"] for k in ("W_Q", "W_K", "W_V", "W_O")}
        q = torch.einsum("pm,hme->hpe", resid, w["W_Q"])
        k = torch.einsum("pm,hme->hpe", resid, w["W_K"])
        v = torch.einsum("pm,hme->hpe", resid, w["W_V"])
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        pattern = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        z = pattern @ v
        resid = resid + torch.einsum("hpe,hem->pm", z, w["W_O"])
    return resid @ weights["unembed.W_U"]


def test_attention_only_model_equals_a_hand_written_one():
    program = tndsl.load(ROOT / "examples" / "attn_only_2l.tn")
    module = program.module(["logits"]).double()
    weights = {k: v.detach() for k, v in module.named_parameters()}
    tokens = torch.randint(0, 64, (32,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (module(tokens) - hand_written_attn_only(weights, tokens)).abs().max() < 1e-10


# ---- training -----------------------------------------------------------------------------

def test_optimiser_steps_lower_the_loss_and_gradients_reach_every_param():
    torch.manual_seed(0)
    program = tndsl.load(ROOT / "examples" / "attn_only_2l.tn",
                         dims={"Context": 8, "Vocab": 10, "Model": 16, "Heads": 2})
    module = program.module(["logits"])
    tokens = torch.randint(0, 10, (16, 8))
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-2)

    def loss_fn():
        logits = module(tokens)[:, :-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 10), tokens[:, 1:].reshape(-1))

    first = loss_fn()
    first.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    for _ in range(30):
        optimiser.zero_grad()
        loss_fn().backward()
        optimiser.step()
    assert loss_fn().item() < 0.9 * first.item()


@pytest.mark.parametrize("example", ["gpt2_small", "attn_only_2l", "mlp"])
def test_gradients_equal_the_reference_evaluators(example):
    from tndsl.verify.numeric import small_program
    program = small_program(tndsl.load(ROOT / "examples" / f"{example}.tn"))
    module = program.module().double()
    values = random_tensors(program, torch.Generator().manual_seed(3))
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(values[name])
    inputs = [t.name for t in program.inputs]
    output = module(*(values[n] for n in inputs))
    weight = torch.randn(output.shape, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(4))
    (output * weight).sum().backward()

    leaves = {name: v.clone().requires_grad_(v.dtype.is_floating_point)
              for name, v in values.items()}
    expected = Reference(program, leaves)[program.final.name]
    (expected * weight).sum().backward()
    compared = 0
    for name, param in module.named_parameters():
        if param.grad is None:  # a param the output does not use: no gradient either way
            assert leaves[name].grad is None, name
            continue
        assert (param.grad - leaves[name].grad).abs().max() < 1e-8, name
        compared += 1
    assert compared >= 4
