"""The model families against Hugging Face transformers, from checkpoints on disk.

For each family a random small config of the transformers class is saved with
`save_pretrained` to a temporary folder and loaded with `tndsl.from_pretrained`; the
logits must equal HF's on the same tokens: within 1e-4 in float32, and within 1e-10 in
float64. For float64, HF is made a float64 oracle first: by design it computes rotary
angles and RMS norms in float32 even in a float64 model (and eager attention's softmax,
so SDPA is used), which alone differs by ~1e-7; the test replaces those two forwards
with the same formulas in float64 (`_float64_oracle`), written here, independently.
"""
import math

import pytest
import torch
import transformers  # a test dependency (pyproject's `test` extra): the oracle

import tndsl
from tndsl.models import WeightsError, load_hf

TOKENS = 10  # shorter than every config's context (and longer than Mistral's window)


def _randomize(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


def _save(model_class, config, folder, seed=0):
    model = _randomize(model_class(config), seed).eval()
    model.save_pretrained(folder)
    return model


def _float64_oracle(model):
    """HF's forwards with their float32 casts removed (see the module docstring)."""
    for module in model.modules():
        kind = type(module).__name__
        if kind.endswith("RMSNorm"):
            eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
            plus_one = kind.startswith("Gemma")

            def norm(x, module=module, eps=eps, plus_one=plus_one):
                y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
                return y * (1 + module.weight) if plus_one else y * module.weight
            module.forward = norm
        elif kind.endswith("RotaryEmbedding"):
            rope = module.config.rope_parameters
            dim = module.inv_freq.numel() * 2
            inverse = 1 / rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64)
                                                 / dim)

            def rotary(x, position_ids, inverse=inverse):
                angles = position_ids[..., None].to(torch.float64) * inverse
                angles = torch.cat((angles, angles), dim=-1)
                return angles.cos().to(x.dtype), angles.sin().to(x.dtype)
            module.forward = rotary
    return model


def _tokens(vocab, seed=1):
    return torch.randint(0, vocab, (2, TOKENS), generator=torch.Generator().manual_seed(seed))


SMALL = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64)

CASES = {
    "llama": lambda: (transformers.LlamaForCausalLM, transformers.LlamaConfig(
        **SMALL, num_key_value_heads=2, rope_theta=5000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False)),
    "llama_tied_mha": lambda: (transformers.LlamaForCausalLM, transformers.LlamaConfig(
        **SMALL, num_key_value_heads=4, tie_word_embeddings=True)),
    "mistral_window": lambda: (transformers.MistralForCausalLM, transformers.MistralConfig(
        **SMALL, num_key_value_heads=1, sliding_window=4, rope_theta=20000.0)),
    "pythia": lambda: (transformers.GPTNeoXForCausalLM, transformers.GPTNeoXConfig(
        **{**SMALL, "intermediate_size": 256}, rotary_pct=0.5, rotary_emb_base=7000,
        hidden_act="gelu", use_parallel_residual=True)),
    "qwen2": lambda: (transformers.Qwen2ForCausalLM, transformers.Qwen2Config(
        **SMALL, num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=True)),
    "gemma": lambda: (transformers.GemmaForCausalLM, transformers.GemmaConfig(
        **SMALL, num_key_value_heads=1, head_dim=32, hidden_activation="gelu_pytorch_tanh")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_family_equals_hugging_face_in_float32_and_float64(case, tmp_path):
    model_class, config = CASES[case]()
    config._attn_implementation = "sdpa"
    hf = _save(model_class, config, tmp_path)
    tokens = _tokens(config.vocab_size)

    module = tndsl.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = hf(tokens).logits
        actual = module(tokens)
    assert actual.dtype == torch.float32
    assert expected.abs().max() > 1  # random weights large enough to mean something
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)

    oracle = _float64_oracle(hf.to(torch.float64))
    module64 = tndsl.from_pretrained(tmp_path, torch.float64)
    with torch.no_grad():
        expected = oracle(tokens).logits
        actual = module64(tokens)
    assert actual.dtype == torch.float64
    assert (actual - expected).abs().max().item() < 1e-10


def test_gpt2_through_from_pretrained_with_a_shorter_context(tmp_path):
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=97,
                                     n_positions=32)
    hf = _save(transformers.GPT2LMHeadModel, config, tmp_path).to(torch.float64)
    tokens = _tokens(97)
    module = tndsl.from_pretrained(tmp_path, torch.float64, context=TOKENS)
    with torch.no_grad():
        assert (module(tokens) - hf(tokens).logits).abs().max().item() < 1e-10


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path):
    model_class, config = CASES["llama"]()
    hf = _save(model_class, config, tmp_path / "one")
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
    _save(model_class, config, tmp_path)
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
    hf = _save(model_class, config, tmp_path).to(torch.float64)
    module = tndsl.from_pretrained(tmp_path, torch.float64)
    tokens = _tokens(config.vocab_size)
    logits, cache = hooks.run_with_cache(module, tokens, names=["blocks.0.attn.k_pre",
                                                                "blocks.0.attn.pattern"])
    assert cache["blocks.0.attn.k_pre"].shape == (2, TOKENS, 2, 16)  # [.., p, g, f]
    pattern = cache["blocks.0.attn.pattern"]
    assert torch.allclose(pattern.sum(-1), torch.ones(2, 4, TOKENS, dtype=torch.float64))
    # Zeroing head 3's pattern changes the logits; HF's own weights give the QK circuit.
    changed = hooks.intervene(module, {"blocks.0.attn.pattern": lambda p: p * torch.tensor(
        [1.0, 1, 1, 0], dtype=p.dtype)[:, None, None]})
    with changed:
        assert not torch.allclose(module(tokens), logits)
    weights = circuits.named_weights(module)
    attention = hf.model.layers[0].self_attn
    w_q = attention.q_proj.weight.detach()  # [heads * head, model]
    w_k = attention.k_proj.weight.detach()  # [kv_heads * head, model]
    for head in range(4):
        expected = w_q[16 * head:16 * head + 16].T @ w_k[16 * (head // 2):16 * (head // 2) + 16]
        qk = circuits.qk_matrix(weights["blocks.0.attn.W_Q"], weights["blocks.0.attn.W_K"], head)
        torch.testing.assert_close(qk.materialize(), expected)
