"""The families that need issue 26's language constructs, against Hugging Face
transformers, from random checkpoints saved to disk and read by `tndsl.from_pretrained`:
Gemma 2 (soft-capping, alternating local and global layers through `if`), Gemma 3 text
(per-head q/k norms, a rotary base per layer type), GPT-J (interleaved partial rotary),
BLOOM (ALiBi), Mixtral and Qwen2-MoE (top-k routing over an `Experts` leg).

Each equals HF's logits on a batch of two sequences shorter than the context, within
1e-4 in float32 and 1e-10 in float64. For float64, HF's own float32 steps are replaced
by the same formulas in float64, written here (as tests/test_families.py does): the
RMS norms and rotary tables, eager attention's float32 softmax (Gemma 2/3, whose soft-
capping only eager attention implements), BLOOM's float32 softmax, GPT-J's float32
sin/cos table and the MoE routers' float32 softmax. Nothing else of HF is touched.
"""
import pytest
import torch
import torch.nn.functional as F
import transformers

import tndsl
from tndsl.models import WeightsError
from hf_models import SMALL, float64_oracle as _float64_oracle, randomize
from hf_models import tokens as _tokens


def _save(model_class, config, folder, seed=0):
    """A random checkpoint on disk (the attention implementation the case chose)."""
    model = randomize(model_class(config), seed).eval()
    model.save_pretrained(folder)
    return model


def _eager_float64(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                   softcap=None, **kwargs):
    """HF's eager attention (Gemma 2/3) without its float32 softmax."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    weights = query @ key.transpose(2, 3) * scaling
    if softcap is not None:
        weights = softcap * torch.tanh(weights / softcap)
    if attention_mask is not None:
        weights = weights + attention_mask
    return (torch.softmax(weights, -1) @ value).transpose(1, 2), None


def _router_float64(router):
    def forward(hidden):
        hidden = hidden.reshape(-1, router.hidden_dim)
        logits = hidden @ router.weight.T
        values, chosen = torch.topk(torch.softmax(logits, -1), router.top_k, -1)
        if getattr(router, "norm_topk_prob", True):
            values = values / values.sum(-1, keepdim=True)
        return logits, values, chosen
    return forward


def _gemma3_rotary(module):
    def forward(x, position_ids, layer_type):
        base = module.config.rope_parameters[layer_type]["rope_theta"]
        dim = module.config.head_dim
        inverse = 1 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles = position_ids[..., None].to(torch.float64) * inverse
        angles = torch.cat((angles, angles), -1)
        return angles.cos(), angles.sin()
    return forward


def _gptj_rotary(module):
    def forward(x, position_ids):
        dim = module.pos_embd_dim
        inverse = 1 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles = position_ids[..., None].to(torch.float64) * inverse
        return angles.sin(), angles.cos()
    return forward


class _NoUpcastF:
    """torch.nn.functional for BLOOM's module, its softmax without the float32 cast."""

    def __getattr__(self, name):
        return getattr(F, name)

    @staticmethod
    def softmax(x, dim, dtype=None):
        return torch.softmax(x, dim)


def _oracle64(model, monkeypatch):
    model = model.to(torch.float64)
    monkeypatch.setattr(transformers.models.gemma2.modeling_gemma2,
                        "eager_attention_forward", _eager_float64)
    monkeypatch.setattr(transformers.models.gemma3.modeling_gemma3,
                        "eager_attention_forward", _eager_float64)
    monkeypatch.setattr(transformers.models.bloom.modeling_bloom, "F", _NoUpcastF())
    for module in model.modules():
        kind = type(module).__name__
        if kind == "Gemma3RotaryEmbedding":
            module.forward = _gemma3_rotary(module)
        elif kind == "GPTJRotaryEmbedding":
            module.forward = _gptj_rotary(module)
        elif kind.endswith("TopKRouter"):
            module.forward = _router_float64(module)
    rest = [m for m in model.modules() if type(m).__name__ not in (
        "Gemma3RotaryEmbedding", "GPTJRotaryEmbedding")]
    if any(type(m).__name__.endswith("RotaryEmbedding") for m in rest):
        _float64_oracle(model)
    else:  # only the norms
        for module in model.modules():
            if type(module).__name__.endswith("RMSNorm"):
                eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
                plus_one = type(module).__name__.startswith("Gemma")
                module.forward = (lambda x, m=module, eps=eps, one=plus_one:
                                  x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
                                  * ((1 + m.weight) if one else m.weight))
    return model


_MOE = dict(experts_implementation="eager")  # the loop over experts (grouped_mm lacks float64)

CASES = {
    # Layer 0 local (window 4 < 10 tokens), layer 1 global, layer 2 local.
    "gemma2": lambda: (transformers.Gemma2ForCausalLM, transformers.Gemma2Config(
        **{**SMALL, "num_hidden_layers": 3}, num_key_value_heads=2, head_dim=16,
        sliding_window=4, query_pre_attn_scalar=24, attn_logit_softcapping=3.0,
        final_logit_softcapping=5.0, rope_theta=5000.0), "eager"),
    "gemma2_uncapped": lambda: (transformers.Gemma2ForCausalLM, transformers.Gemma2Config(
        **SMALL, num_key_value_heads=4, head_dim=16, sliding_window=3,
        attn_logit_softcapping=None, final_logit_softcapping=None), "eager"),
    # Every third layer global; bases 300 (local) and 50000 (global).
    "gemma3": lambda: (transformers.Gemma3ForCausalLM, transformers.Gemma3TextConfig(
        **{**SMALL, "num_hidden_layers": 4}, num_key_value_heads=2, head_dim=16,
        sliding_window=4, query_pre_attn_scalar=24, sliding_window_pattern=3,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 5e4},
                         "sliding_attention": {"rope_type": "default",
                                               "rope_theta": 300.0}}), "eager"),
    # 6 of each head's 16 entries rotate, in interleaved pairs; n_inner null (4 x model).
    "gptj": lambda: (transformers.GPTJForCausalLM, transformers.GPTJConfig(
        vocab_size=97, n_embd=64, n_layer=2, n_head=4, n_positions=64, rotary_dim=6,
        bos_token_id=0, eos_token_id=0), "sdpa"),
    # 6 heads: not a power of two, so the slopes take BLOOM's second series too.
    "bloom": lambda: (transformers.BloomForCausalLM, transformers.BloomConfig(
        vocab_size=97, hidden_size=96, n_layer=2, n_head=6, bos_token_id=0,
        eos_token_id=0), None),
    "mixtral": lambda: (transformers.MixtralForCausalLM, transformers.MixtralConfig(
        **SMALL, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        sliding_window=None, **_MOE), "sdpa"),
    "qwen2_moe": lambda: (transformers.Qwen2MoeForCausalLM, transformers.Qwen2MoeConfig(
        **SMALL, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, shared_expert_intermediate_size=48, **_MOE), "sdpa"),
    "qwen2_moe_normalized": lambda: (transformers.Qwen2MoeForCausalLM,
                                     transformers.Qwen2MoeConfig(
        **SMALL, num_key_value_heads=4, num_experts=5, num_experts_per_tok=3,
        moe_intermediate_size=32, shared_expert_intermediate_size=48, norm_topk_prob=True,
        **_MOE), "sdpa"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_family_equals_hugging_face_in_float32_and_float64(case, tmp_path, monkeypatch):
    model_class, config, attention = CASES[case]()
    if attention is not None:
        config._attn_implementation = attention
    hf = _save(model_class, config, tmp_path)
    tokens = _tokens(config.vocab_size)

    module = tndsl.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = hf(tokens).logits
        actual = module(tokens)
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    assert expected.abs().max() > 1  # random weights large enough to mean something
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)

    oracle = _oracle64(hf, monkeypatch)
    module64 = tndsl.from_pretrained(tmp_path, torch.float64)
    with torch.no_grad():
        expected = oracle(tokens).logits
        actual = module64(tokens)
    assert actual.dtype == torch.float64
    assert (actual - expected).abs().max().item() < 1e-10


def test_layer_types_that_are_not_periodic_are_refused(tmp_path):
    config = transformers.Gemma2Config(**{**SMALL, "num_hidden_layers": 3}, head_dim=16,
                                       num_key_value_heads=4,
                                       layer_types=["full_attention", "sliding_attention",
                                                    "sliding_attention"])
    _save(transformers.Gemma2ForCausalLM, config, tmp_path)
    with pytest.raises(WeightsError, match="layer_types = .* is not periodic"):
        tndsl.from_pretrained(tmp_path)


def test_a_config_value_the_file_does_not_implement_is_refused(tmp_path):
    config = transformers.BloomConfig(vocab_size=97, hidden_size=64, n_layer=1, n_head=4,
                                      apply_residual_connection_post_layernorm=True,
                                      bos_token_id=0, eos_token_id=0)
    _save(transformers.BloomForCausalLM, config, tmp_path)
    with pytest.raises(WeightsError, match="apply_residual_connection_post_layernorm"):
        tndsl.from_pretrained(tmp_path)
