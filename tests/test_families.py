"""The model families against Hugging Face transformers, from checkpoints on disk.

For each family a random small config of the transformers class is saved with
`save_pretrained` to a temporary folder and loaded with `tndsl.from_pretrained`; the
logits must equal HF's on the same tokens: within 1e-4 in float32, and within 1e-10 in
float64. For float64, HF is made a float64 oracle first: by design it computes rotary
angles and RMS norms in float32 even in a float64 model (and eager attention's softmax,
so SDPA is used), which alone differs by ~1e-7; the test replaces those two forwards
with the same formulas in float64 (`hf_models.float64_oracle`), written independently.
"""
import pytest
import torch
import transformers

import tndsl
from hf_models import CASES, CONSTRUCT_FAMILIES, FAMILY_OF, TOKENS, float64_oracle, save, \
    tokens
from tndsl.models import WeightsError, load_hf
from tndsl.models.tables import FAMILIES


def test_every_family_has_a_case():
    assert {f.name for f in FAMILIES} <= set(FAMILY_OF.values())


# The families of issue 26's constructs run the same test in test_families_constructs.
@pytest.mark.parametrize("case", sorted(c for c in CASES
                                        if FAMILY_OF[c] not in CONSTRUCT_FAMILIES))
def test_family_equals_hugging_face_in_float32_and_float64(case, tmp_path):
    from tndsl.models.tables import FAMILIES
    tolerance = next(f.tolerance for f in FAMILIES if f.name == FAMILY_OF[case])
    model_class, config = CASES[case]()
    hf = save(model_class, config, tmp_path)
    ids = tokens(config.vocab_size)

    module = tndsl.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = hf(ids).logits
        actual = module(ids)
    assert actual.dtype == torch.float32
    assert expected.abs().max() > 1  # random weights large enough to mean something
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)

    oracle = float64_oracle(hf.to(torch.float64))
    module64 = tndsl.from_pretrained(tmp_path, torch.float64)
    with torch.no_grad():
        expected = oracle(ids).logits
        actual = module64(ids)
    assert actual.dtype == torch.float64
    assert (actual - expected).abs().max().item() < tolerance


def test_gpt2_through_from_pretrained_with_a_shorter_context(tmp_path):
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=97,
                                     n_positions=32)
    hf = save(transformers.GPT2LMHeadModel, config, tmp_path).to(torch.float64)
    ids = tokens(97)
    module = tndsl.from_pretrained(tmp_path, torch.float64, context=TOKENS)
    with torch.no_grad():
        assert (module(ids) - hf(ids).logits).abs().max().item() < 1e-10


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path):
    model_class, config = CASES["llama"]()
    hf = save(model_class, config, tmp_path / "one")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    one, sharded = load_hf(tmp_path / "one")[1], load_hf(tmp_path / "sharded")[1]
    assert one.keys() == sharded.keys()
    assert all(torch.equal(one[k], sharded[k]) for k in one)


def test_unsupported_model_type_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    with pytest.raises(WeightsError) as info:
        tndsl.from_pretrained(tmp_path)
    message = str(info.value)
    assert '"t5"' in message
    for supported in ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma"):
        assert supported in message


def test_missing_extra_and_misshapen_tensors_are_one_error_listing_all(tmp_path):
    from safetensors.torch import load_file, save_file
    model_class, config = CASES["qwen2"]()
    save(model_class, config, tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(str(path))
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    tensors["model.layers.0.extra.weight"] = torch.zeros(3)
    tensors["model.norm.weight"] = torch.zeros(65)
    save_file(tensors, str(path))
    with pytest.raises(WeightsError) as info:
        tndsl.from_pretrained(tmp_path)
    message = str(info.value)
    assert "missing: model.layers.1.self_attn.k_proj.bias" in message
    assert "unexpected: model.layers.0.extra.weight" in message
    assert "shape of model.norm.weight: expected (64,), got (65,)" in message


def test_hooks_and_gqa_circuits_on_a_loaded_llama(tmp_path):
    from tndsl.interp import circuits, hooks
    model_class, config = CASES["llama"]()  # 4 query heads on 2 key/value heads
    hf = save(model_class, config, tmp_path).to(torch.float64)
    module = tndsl.from_pretrained(tmp_path, torch.float64)
    ids = tokens(config.vocab_size)
    logits, cache = hooks.run_with_cache(module, ids, names=["blocks.0.attn.k_pre",
                                                             "blocks.0.attn.pattern"])
    assert cache["blocks.0.attn.k_pre"].shape == (2, TOKENS, 2, 16)  # [.., p, g, f]
    pattern = cache["blocks.0.attn.pattern"]
    assert torch.allclose(pattern.sum(-1), torch.ones(2, 4, TOKENS, dtype=torch.float64))
    # Zeroing head 3's pattern changes the logits; HF's own weights give the QK circuit.
    changed = hooks.intervene(module, {"blocks.0.attn.pattern": lambda p: p * torch.tensor(
        [1.0, 1, 1, 0], dtype=p.dtype)[:, None, None]})
    with changed:
        assert not torch.allclose(module(ids), logits)
    weights = circuits.named_weights(module)
    attention = hf.model.layers[0].self_attn
    w_q = attention.q_proj.weight.detach()  # [heads * head, model]
    w_k = attention.k_proj.weight.detach()  # [kv_heads * head, model]
    for head in range(4):
        expected = w_q[16 * head:16 * head + 16].T @ w_k[16 * (head // 2):16 * (head // 2) + 16]
        qk = circuits.qk_matrix(weights["blocks.0.attn.W_Q"], weights["blocks.0.attn.W_K"], head)
        torch.testing.assert_close(qk.materialize(), expected)


def test_a_context_is_a_positive_integer_within_the_learnt_positions(tmp_path):
    model_class, config = CASES["bert"]()   # 32 learnt positions
    save(model_class, config, tmp_path)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="context must be a positive whole number"):
            tndsl.from_pretrained(tmp_path, context=bad)
    with pytest.raises(WeightsError, match="context = 33 is longer than the 32 positions"):
        tndsl.from_pretrained(tmp_path, context=33)
    assert tndsl.from_pretrained(tmp_path, context=32).tndsl_program.sizes["Context"] == 32
