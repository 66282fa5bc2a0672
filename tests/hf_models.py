"""Small random Hugging Face checkpoints of every family, and transformers made a
float64 oracle: the shared ground of test_families, test_config_keys and
test_all_families.

By design transformers computes rotary angles and RMS norms in float32 even in a
float64 model, which alone differs by ~1e-7, and keeps Gemma's embedding scale
sqrt(hidden) as a float32 buffer; `float64_oracle` replaces those forwards with the same
formulas in float64 (and the scale by its float64 value), written here, independently
of tndsl.
"""
import torch
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
}


def build(case, **overrides):
    """(model class, config) of a case, with config kwargs overridden."""
    model, config, kwargs = SPECS[case]
    return getattr(transformers, model), getattr(transformers, config)(
        **{**kwargs, **overrides})


CASES = {case: (lambda case=case: build(case)) for case in SPECS}

# The family each case checks (a case named after its family, or with a suffix).
_FAMILIES = ("gpt_bigcode", "llama", "mistral", "pythia", "qwen2", "qwen3", "gemma",
             "olmo2", "phi3", "stablelm", "gpt2", "bert")
FAMILY_OF = {case: next(f for f in _FAMILIES if case == f or case.startswith(f + "_"))
             for case in CASES}


def randomize(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


def save(model_class, config, folder, seed=0):
    config._attn_implementation = "sdpa"
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
        elif kind.endswith("RotaryEmbedding"):
            rope = module.config.rope_parameters
            dim = _rotary_dim(module)
            inverse = 1 / rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64)
                                                 / dim)

            def rotary(x, position_ids, inverse=inverse):
                angles = position_ids[..., None].to(torch.float64) * inverse
                angles = torch.cat((angles, angles), dim=-1)
                return angles.cos().to(x.dtype), angles.sin().to(x.dtype)
            module.forward = rotary
    return model


def _rotary_dim(module) -> int:
    """The `dim` transformers divides by: int(head_dim * partial_rotary_factor)."""
    config = module.config
    rope = config.rope_parameters
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(head * rope.get("partial_rotary_factor", 1.0))


def tokens(vocab, seed=1, length=TOKENS):
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits
