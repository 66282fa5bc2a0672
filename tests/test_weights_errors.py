"""`load_hf_gpt2` on malformed checkpoints (issue 16): every mistake in config.json is a
WeightsError naming the field and its value, never a ZeroDivisionError, KeyError,
TypeError, AttributeError or failed reshape, and a huge `n_layer` is refused at once."""
import json

import pytest
import torch
from safetensors.torch import save_file

from tndsl.models.weights import GPT2_SIZES, WeightsError, load_hf_gpt2

GOOD = {"n_layer": 2, "n_head": 2, "n_embd": 4, "vocab_size": 5, "n_positions": 3}


def tensors(n_layer=2, n_embd=4, vocab=5, positions=3) -> dict[str, torch.Tensor]:
    """A GPT-2 state dict as Hugging Face names it, random values."""
    g = torch.Generator().manual_seed(0)
    shapes = {"transformer.wte.weight": (vocab, n_embd),
              "transformer.wpe.weight": (positions, n_embd),
              "transformer.ln_f.weight": (n_embd,), "transformer.ln_f.bias": (n_embd,)}
    for l in range(n_layer):
        h = f"transformer.h.{l}."
        shapes |= {h + "ln_1.weight": (n_embd,), h + "ln_1.bias": (n_embd,),
                   h + "ln_2.weight": (n_embd,), h + "ln_2.bias": (n_embd,),
                   h + "attn.c_attn.weight": (n_embd, 3 * n_embd),
                   h + "attn.c_attn.bias": (3 * n_embd,),
                   h + "attn.c_proj.weight": (n_embd, n_embd), h + "attn.c_proj.bias": (n_embd,),
                   h + "mlp.c_fc.weight": (n_embd, 4 * n_embd),
                   h + "mlp.c_fc.bias": (4 * n_embd,),
                   h + "mlp.c_proj.weight": (4 * n_embd, n_embd),
                   h + "mlp.c_proj.bias": (n_embd,)}
    return {k: torch.randn(*s, generator=g) for k, s in shapes.items()}


@pytest.fixture
def checkpoint(tmp_path):
    """A folder with a valid tiny GPT-2 checkpoint; `write(config)` replaces config.json."""
    save_file(tensors(), str(tmp_path / "model.safetensors"))

    def write(config):
        text = config if isinstance(config, str) else json.dumps(config)
        (tmp_path / "config.json").write_text(text)
        return tmp_path
    write(GOOD)
    return write


def test_the_valid_checkpoint_loads_in_transformer_lens_layout(checkpoint):
    folder = checkpoint(GOOD)
    state = load_hf_gpt2(folder)
    raw = tensors()
    assert torch.equal(state["embed.W_E"], raw["transformer.wte.weight"])
    # W_Q[head, model, e] is column head * 2 + e of the first third of c_attn.
    c_attn = raw["transformer.h.1.attn.c_attn.weight"]
    assert torch.equal(state["blocks.1.attn.W_Q"][1, :, 0], c_attn[:, 2])
    assert torch.equal(state["blocks.1.attn.W_V"][0, :, 1], c_attn[:, 8 + 1])


MALFORMED = [
    # (config.json, words the message must contain)
    ({**GOOD, "n_head": 0}, ["`n_head` = 0", "positive integer"]),
    ({**GOOD, "n_head": -2}, ["`n_head` = -2"]),
    ({**GOOD, "n_embd": 5}, ["`n_embd` = 5", "`n_head` = 2", "divisible"]),
    ({**GOOD, "n_embd": "4"}, ['`n_embd` = "4"']),
    ({**GOOD, "n_embd": 4.0}, ["`n_embd` = 4.0"]),
    ({**GOOD, "n_embd": 4.5}, ["`n_embd` = 4.5"]),
    ({**GOOD, "n_layer": True}, ["`n_layer` = true"]),
    ({**GOOD, "n_layer": None}, ["`n_layer` = null"]),
    ({**GOOD, "n_layer": [2]}, ["`n_layer` = [2]"]),
    ({**GOOD, "n_layer": {"value": 2}}, ['`n_layer` = {"value": 2}']),
    ('{"n_layer": NaN, "n_head": 2, "n_embd": 4, "vocab_size": 5, "n_positions": 3}',
     ["`n_layer` = nan"]),
    ('{"n_layer": 1e400, "n_head": 2, "n_embd": 4, "vocab_size": 5, "n_positions": 3}',
     ["`n_layer` = inf"]),
    ({**GOOD, "n_layer": 3}, ["`n_layer` = 3", "holds 2 layers"]),
    ({**GOOD, "n_layer": 10**12}, ["`n_layer` = 1000000000000", "holds 2 layers"]),
    ({**GOOD, "vocab_size": 7}, ["`vocab_size` = 7", "wte.weight", "(5, 4)"]),
    ({**GOOD, "n_positions": 1024}, ["`n_positions` = 1024", "wpe.weight"]),
    ({**GOOD, "n_embd": 8, "n_head": 2}, ["`n_embd` = 8", "(5, 4)"]),
    ([1, 2], ["JSON object", "list"]),
    ("null", ["JSON object", "NoneType"]),
    ('"gpt2"', ["JSON object", "str"]),
    ("{not json", ["cannot read", "config.json"]),
] + [({k: v for k, v in GOOD.items() if k != field}, [f"`{field}` is missing"])
     for field in GPT2_SIZES]


@pytest.mark.parametrize("config, words", MALFORMED,
                         ids=[str(c)[:48] for c, _ in MALFORMED])
def test_every_malformed_config_is_a_weights_error_naming_field_and_value(checkpoint,
                                                                          config, words):
    folder = checkpoint(config)
    with pytest.raises(WeightsError) as info:
        load_hf_gpt2(folder)
    message = info.value.message
    assert "config.json" in message
    for word in words:
        assert word in message, message


def test_a_huge_n_layer_is_refused_at_once(checkpoint, monkeypatch):
    # It used to run 34 s to a MemoryError, listing 10^12 layers' expected shapes: now the
    # layer count is checked against the checkpoint's before any per-layer work (the
    # comparison of shapes, which follows the per-layer listing, is never reached).
    from tndsl.models import weights

    def compare(*args, **kwargs):
        raise AssertionError("per-layer work before refusing n_layer")

    monkeypatch.setattr(weights, "_compare", compare)
    folder = checkpoint({**GOOD, "n_layer": 10**12})
    with pytest.raises(WeightsError, match=f"`n_layer` = {10**12}, but the checkpoint holds "
                                           f"{GOOD['n_layer']} layers"):
        load_hf_gpt2(folder)


def test_config_json_that_is_not_utf8_is_a_weights_error(checkpoint):
    folder = checkpoint(GOOD)
    (folder / "config.json").write_bytes(b"\xff\xfe{\x00")
    with pytest.raises(WeightsError, match="cannot read"):
        load_hf_gpt2(folder)


def test_a_damaged_safetensors_file_is_a_weights_error(checkpoint):
    folder = checkpoint(GOOD)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(WeightsError, match="cannot read .*model.safetensors"):
        load_hf_gpt2(folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(WeightsError, match="cannot read"):
        load_hf_gpt2(folder)


@pytest.mark.parametrize("content", [[torch.zeros(2)], {"wte.weight": [1, 2]}, torch.zeros(3)])
def test_a_pytorch_model_bin_that_is_not_a_state_dict_is_a_weights_error(checkpoint,
                                                                          content):
    folder = checkpoint(GOOD)
    (folder / "model.safetensors").unlink()
    torch.save(content, folder / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="not a state dict"):
        load_hf_gpt2(folder)
