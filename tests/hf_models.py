"""Small random Hugging Face checkpoints of every family, and transformers made a
float64 oracle: the shared ground of test_families, test_families_constructs,
test_config_keys and test_all_families.

By design transformers computes rotary angles and RMS norms in float32 even in a
float64 model, which alone differs by ~1e-7, and keeps Gemma's embedding scale
sqrt(hidden) as a float32 buffer; `float64_oracle` replaces those forwards with the same
formulas in float64 (and the scale by its float64 value), written here, independently
of tndsl. The families of issue 26's constructs have float32 steps of their own, which
it replaces too: eager attention's float32 softmax (Gemma 2/3, whose soft-capping only
eager attention implements), BLOOM's float32 softmax, Gemma 3's rotary table per layer
type, GPT-J's float32 sin/cos table and the MoE routers' float32 softmax.
"""
import copy
import sys

import torch
import torch.nn.functional as F
import transformers  # a test dependency (pyproject's `test` extra): the oracle

TOKENS = 10  # shorter than every config's context (and longer than Mistral's window)

SMALL = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64)
GPT_LIKE = dict(vocab_size=97, n_embd=64, n_layer=2, n_head=4, n_positions=32)
# Sizes that are not powers of two: sqrt(Model) irrational, 3 query heads per KV head,
# odd head dims where no rotation needs them even, 3 layers.
ODD = dict(vocab_size=53, hidden_size=60, intermediate_size=70, num_hidden_layers=3,
           num_attention_heads=6, max_position_embeddings=40)

# case → (model class, config class, config kwargs): one checkpoint per family at least,
# with non-default settings where the family has them.
# The MoE families run transformers' loop over experts (grouped_mm lacks float64).
_MOE = dict(experts_implementation="eager")

SPECS = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", dict(
        **SMALL, num_key_value_heads=2, rope_theta=5000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False)),
    "llama_tied_mha": ("LlamaForCausalLM", "LlamaConfig", dict(
        **SMALL, num_key_value_heads=4, tie_word_embeddings=True)),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(
        **SMALL, num_key_value_heads=1, sliding_window=4, rope_theta=20000.0)),
    "pythia": ("GPTNeoXForCausalLM", "GPTNeoXConfig", dict(
        **{**SMALL, "intermediate_size": 256}, rotary_pct=0.5, rotary_emb_base=7000,
        hidden_act="gelu", use_parallel_residual=True)),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(
        **SMALL, num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=True)),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(
        **SMALL, num_key_value_heads=2, head_dim=24, rope_theta=1e6,
        tie_word_embeddings=False)),
    "gemma": ("GemmaForCausalLM", "GemmaConfig", dict(
        **SMALL, num_key_value_heads=1, head_dim=32, hidden_act="gelu_pytorch_tanh")),
    "olmo2": ("Olmo2ForCausalLM", "Olmo2Config", dict(
        **SMALL, num_key_value_heads=2, rope_theta=30000.0)),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", dict(
        **SMALL, num_key_value_heads=2, partial_rotary_factor=0.5, sliding_window=5,
        pad_token_id=0)),
    "stablelm": ("StableLmForCausalLM", "StableLmConfig", dict(
        **SMALL, num_key_value_heads=2, use_qkv_bias=True, partial_rotary_factor=0.5)),
    "gpt_bigcode": ("GPTBigCodeForCausalLM", "GPTBigCodeConfig",
                    dict(**GPT_LIKE, multi_query=True)),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(GPT_LIKE)),
    "bert": ("BertForMaskedLM", "BertConfig", dict(
        **{**SMALL, "max_position_embeddings": 32}, layer_norm_eps=1e-6)),
    "gemma_odd_untied": ("GemmaForCausalLM", "GemmaConfig", dict(
        **ODD, num_key_value_heads=2, head_dim=18, tie_word_embeddings=False)),
    "phi3_odd_tied": ("Phi3ForCausalLM", "Phi3Config", dict(
        **ODD, num_key_value_heads=2, partial_rotary_factor=0.4, tie_word_embeddings=True,
        pad_token_id=0)),
    "stablelm_odd_parallel": ("StableLmForCausalLM", "StableLmConfig", dict(
        **ODD, num_key_value_heads=3, partial_rotary_factor=0.4, use_parallel_residual=True,
        tie_word_embeddings=True)),
    "gpt_bigcode_odd_mha_untied": ("GPTBigCodeForCausalLM", "GPTBigCodeConfig", dict(
        vocab_size=53, n_embd=60, n_layer=3, n_head=4, n_positions=40, multi_query=False,
        tie_word_embeddings=False)),
    "bert_odd_untied": ("BertForMaskedLM", "BertConfig", dict(
        **ODD, tie_word_embeddings=False)),
    # The families of issue 26's constructs (test_families_constructs).
    # Layer 0 local (window 4 < 10 tokens), layer 1 global, layer 2 local.
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", dict(
        **{**SMALL, "num_hidden_layers": 3}, num_key_value_heads=2, head_dim=16,
        sliding_window=4, query_pre_attn_scalar=24, attn_logit_softcapping=3.0,
        final_logit_softcapping=5.0, rope_theta=5000.0)),
    "gemma2_uncapped": ("Gemma2ForCausalLM", "Gemma2Config", dict(
        **SMALL, num_key_value_heads=4, head_dim=16, sliding_window=3,
        attn_logit_softcapping=None, final_logit_softcapping=None)),
    # Every third layer global; bases 300 (local) and 50000 (global).
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig", dict(
        **{**SMALL, "num_hidden_layers": 4}, num_key_value_heads=2, head_dim=16,
        sliding_window=4, query_pre_attn_scalar=24, sliding_window_pattern=3,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 5e4},
                         "sliding_attention": {"rope_type": "default",
                                               "rope_theta": 300.0}})),
    # 6 of each head's 16 entries rotate, in interleaved pairs; n_inner null (4 x model).
    "gptj": ("GPTJForCausalLM", "GPTJConfig", dict(
        vocab_size=97, n_embd=64, n_layer=2, n_head=4, n_positions=64, rotary_dim=6,
        bos_token_id=0, eos_token_id=0)),
    # 6 heads: not a power of two, so the slopes take BLOOM's second series too.
    "bloom": ("BloomForCausalLM", "BloomConfig", dict(
        vocab_size=97, hidden_size=96, n_layer=2, n_head=6, bos_token_id=0,
        eos_token_id=0)),
    # head_dim given (64 / 4): transformers' dynamic rotary scaling reads config.head_dim,
    # which Mixtral's config otherwise keeps null, and fails.
    "mixtral": ("MixtralForCausalLM", "MixtralConfig", dict(
        **SMALL, num_key_value_heads=2, head_dim=16, num_local_experts=4,
        num_experts_per_tok=2, sliding_window=None, **_MOE)),
    "qwen2_moe": ("Qwen2MoeForCausalLM", "Qwen2MoeConfig", dict(
        **SMALL, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, shared_expert_intermediate_size=48, **_MOE)),
    "qwen2_moe_normalized": ("Qwen2MoeForCausalLM", "Qwen2MoeConfig", dict(
        **SMALL, num_key_value_heads=4, num_experts=5, num_experts_per_tok=3,
        moe_intermediate_size=32, shared_expert_intermediate_size=48, norm_topk_prob=True,
        **_MOE)),
}

# The attention implementation each model class is saved and run with: SDPA (eager
# attention softmaxes in float32), except where the oracle needs eager: Gemma 2's soft-
# capping exists only there (its class refuses SDPA), Gemma 3 keeps the eager path it
# was validated on, and BLOOM has no other; `float64_oracle` removes their float32 softmax.
ATTENTION = {"Gemma2ForCausalLM": "eager", "Gemma3ForCausalLM": "eager",
             "BloomForCausalLM": "eager"}


def build(case, **overrides):
    """(model class, config) of a case, with config kwargs overridden. The kwargs are
    copied: transformers standardises rotary dicts in place (a `rope_scaling` object
    gains the family's `rope_theta` and `partial_rotary_factor`), which would otherwise
    leak from one case into the next that shares the dict."""
    model, config, kwargs = SPECS[case]
    return getattr(transformers, model), getattr(transformers, config)(
        **copy.deepcopy({**kwargs, **overrides}))


CASES = {case: (lambda case=case: build(case)) for case in SPECS}

# The family each case checks (a case named after its family, or with a suffix; the
# longest name that fits, so that qwen2_moe_normalized is qwen2_moe's, not qwen2's).
_FAMILIES = ("gpt_bigcode", "llama", "mistral", "pythia", "qwen2", "qwen3", "gemma",
             "olmo2", "phi3", "stablelm", "gpt2", "bert", "gemma2", "gemma3", "gptj",
             "bloom", "mixtral", "qwen2_moe")
FAMILY_OF = {case: max((f for f in _FAMILIES if case == f or case.startswith(f + "_")),
                       key=len)
             for case in CASES}
# The families of issue 26's constructs: test_families_constructs runs their cases,
# test_families the others.
CONSTRUCT_FAMILIES = ("gemma2", "gemma3", "gptj", "bloom", "mixtral", "qwen2_moe")


def randomize(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


def save(model_class, config, folder, seed=0):
    config._attn_implementation = ATTENTION.get(model_class.__name__, "sdpa")
    model = randomize(model_class(config), seed).eval()
    model.save_pretrained(folder)
    return model


def float64_oracle(model):
    """HF's forwards with their float32 casts removed (see the module docstring)."""
    for module in model.modules():
        kind = type(module).__name__
        if hasattr(module, "scalar_embed_scale"):   # Gemma's scaled embedding
            module.embed_scale = torch.tensor(module.scalar_embed_scale, dtype=torch.float64)
        if kind.endswith("RMSNorm"):
            eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
            plus_one = kind.startswith("Gemma")

            def norm(x, module=module, eps=eps, plus_one=plus_one):
                y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
                return y * (1 + module.weight) if plus_one else y * module.weight
            module.forward = norm
        elif kind == "GPTJRotaryEmbedding":
            module.forward = _gptj_rotary(module)
        elif kind.endswith("RotaryEmbedding"):
            module.forward = _rotary(module)
        elif kind in ("Gemma2Attention", "Gemma3Attention"):
            _swap_during(module, "eager_attention_forward", _eager_float64)
        elif kind == "BloomAttention":
            _swap_during(module, "F", _NoUpcastF())
        elif kind.endswith("TopKRouter"):
            module.forward = _router_float64(module)
    return model


def _rotary(module):
    """cos and sin of the rotary angles in float64; Gemma 3's per layer type (its
    `rope_parameters` hold one setting per layer type, and its forward is given it)."""
    def inverse(rope):
        dim = _rotary_dim(module.config, rope)
        return 1 / rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)

    def forward(x, position_ids, layer_type=None):
        rope = module.config.rope_parameters
        angles = position_ids[..., None].to(torch.float64) * inverse(
            rope if layer_type is None else rope[layer_type])
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    return forward


def _gptj_rotary(module):
    """GPT-J's sin and cos (that order), base 10000 as transformers fixes it, over the
    first `rotary_dim` entries of a head, in interleaved pairs."""
    def forward(x, position_ids):
        dim = module.pos_embd_dim
        inverse = 1 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles = position_ids[..., None].to(torch.float64) * inverse
        return angles.sin(), angles.cos()
    return forward


def _swap_during(module, name, value):
    """`name` in the module's transformers source file (a global its forward reads) is
    `value` while this module's forward runs, and only then: other models, and this
    model's other modules, see transformers unchanged."""
    namespace = vars(sys.modules[type(module).__module__])
    forward = module.forward

    def swapped(*args, **kwargs):
        old = namespace[name]
        namespace[name] = value
        try:
            return forward(*args, **kwargs)
        finally:
            namespace[name] = old
    module.forward = swapped


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


class _NoUpcastF:
    """torch.nn.functional for BLOOM's attention, its softmax without the float32 cast."""

    def __getattr__(self, name):
        return getattr(F, name)

    @staticmethod
    def softmax(x, dim, dtype=None):
        return torch.softmax(x, dim)


def _router_float64(router):
    """A MoE router (Mixtral's, Qwen2-MoE's) without its float32 softmax; Mixtral's
    always renormalises the top-k gates, Qwen2-MoE's as `norm_topk_prob` says."""
    def forward(hidden):
        hidden = hidden.reshape(-1, router.hidden_dim)
        logits = hidden @ router.weight.T
        values, chosen = torch.topk(torch.softmax(logits, -1), router.top_k, -1)
        if getattr(router, "norm_topk_prob", True):
            values = values / values.sum(-1, keepdim=True)
        return logits, values, chosen
    return forward


def _rotary_dim(config, rope) -> int:
    """The `dim` transformers divides by: int(head_dim * partial_rotary_factor)."""
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(head * rope.get("partial_rotary_factor", 1.0))


def tokens(vocab, seed=1, length=TOKENS):
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits
