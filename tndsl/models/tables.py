"""Declarative per-family tables: Hugging Face config keys → dims and consts, and
checkpoint tensor names → `.tn` param paths with the layout change between them.

A row `(tn_path, hf_name, layout)` is written once; `{l}` in both names runs over the
layers; `{x}` in an HF name runs over the experts, whose tensors are stacked along the
param's first leg (Mixtral's `experts.{x}.w1.weight` → `W_gate[x: Experts, ...]`); the family's prefix (`model.`) is put before each HF name unless it starts
with `/` (a name outside the decoder, such as `/lm_head.weight`). Layouts (`LAYOUTS` in `tndsl.models.loading`) turn an HF tensor into the
param's shape, read from the compiled program, so the table never states a size.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    example: str                         # the .tn file in examples/
    prefix: str                          # of the decoder's names in the checkpoint
    dims: dict[str, tuple[str, ...]]     # dim → config keys, the first present wins
    consts: dict[str, tuple[str, ...]]   # const → config keys (rope_parameters.* too)
    top: tuple[tuple[str, str, str], ...]
    layer: tuple[tuple[str, str, str], ...]
    # Names that may be in a checkpoint and are not parameters (buffers, tied copies).
    ignored: tuple[str, ...] = ()
    # tn path → HF name to read when the first is absent (tied embeddings).
    tied: dict[str, str] = field(default_factory=dict)
    # dim or const → a derivation from the config (`DERIVATIONS` in
    # tndsl.models.loading) and its arguments, for values no single key holds: the
    # period of alternating layer types, a cap that null turns off.
    derived: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # config key → the only value the .tn file implements (a located error otherwise).
    requires: dict[str, object] = field(default_factory=dict)


_LLAMA_DIMS = {"Vocab": ("vocab_size",), "Model": ("hidden_size",),
               "Heads": ("num_attention_heads",),
               "KVHeads": ("num_key_value_heads", "num_attention_heads"),
               "Head": ("head_dim",), "Hidden": ("intermediate_size",),
               "Layers": ("num_hidden_layers",)}
_LLAMA_CONSTS = {"Theta": ("rope_parameters.rope_theta", "rope_theta"),
                 "Eps": ("rms_norm_eps",)}
_LLAMA_LAYER = (
    ("blocks.{l}.ln1.w", "layers.{l}.input_layernorm.weight", "same"),
    ("blocks.{l}.ln2.w", "layers.{l}.post_attention_layernorm.weight", "same"),
    ("blocks.{l}.attn.W_Q", "layers.{l}.self_attn.q_proj.weight", "heads_in"),
    ("blocks.{l}.attn.W_K", "layers.{l}.self_attn.k_proj.weight", "heads_in"),
    ("blocks.{l}.attn.W_V", "layers.{l}.self_attn.v_proj.weight", "heads_in"),
    ("blocks.{l}.attn.W_O", "layers.{l}.self_attn.o_proj.weight", "heads_out"),
    ("blocks.{l}.mlp.W_gate", "layers.{l}.mlp.gate_proj.weight", "transpose"),
    ("blocks.{l}.mlp.W_in", "layers.{l}.mlp.up_proj.weight", "transpose"),
    ("blocks.{l}.mlp.W_out", "layers.{l}.mlp.down_proj.weight", "transpose"),
)
_LLAMA_TOP = (
    ("embed.W_E", "embed_tokens.weight", "same"),
    ("ln_final.w", "norm.weight", "same"),
    ("unembed.W_U", "/lm_head.weight", "transpose"),
)
_ROTARY_BUFFERS = ("*.rotary_emb.inv_freq",)

LLAMA = Family(
    "llama", ("llama", "mistral"), "llama.tn", "model.",
    {**_LLAMA_DIMS, "Window": ("sliding_window", "max_position_embeddings")},
    _LLAMA_CONSTS, _LLAMA_TOP, _LLAMA_LAYER, _ROTARY_BUFFERS,
    tied={"unembed.W_U": "model.embed_tokens.weight"})

QWEN2 = Family(
    "qwen2", ("qwen2",), "qwen2.tn", "model.", _LLAMA_DIMS, _LLAMA_CONSTS, _LLAMA_TOP,
    _LLAMA_LAYER + (
        ("blocks.{l}.attn.b_Q", "layers.{l}.self_attn.q_proj.bias", "heads_bias"),
        ("blocks.{l}.attn.b_K", "layers.{l}.self_attn.k_proj.bias", "heads_bias"),
        ("blocks.{l}.attn.b_V", "layers.{l}.self_attn.v_proj.bias", "heads_bias"),
    ), _ROTARY_BUFFERS, tied={"unembed.W_U": "model.embed_tokens.weight"})

GEMMA = Family(
    "gemma", ("gemma",), "gemma.tn", "model.", _LLAMA_DIMS, _LLAMA_CONSTS,
    tuple(row for row in _LLAMA_TOP if row[0] != "unembed.W_U"), _LLAMA_LAYER,
    _ROTARY_BUFFERS + ("lm_head.weight",))

PYTHIA = Family(
    "pythia", ("gpt_neox",), "pythia.tn", "gpt_neox.",
    {"Vocab": ("vocab_size",), "Model": ("hidden_size",),
     "Heads": ("num_attention_heads",), "Hidden": ("intermediate_size",),
     "Layers": ("num_hidden_layers",)},
    {"Theta": ("rope_parameters.rope_theta", "rope_theta", "rotary_emb_base"),
     "RotaryFraction": ("rope_parameters.partial_rotary_factor", "partial_rotary_factor",
                        "rotary_pct"),
     "Eps": ("layer_norm_eps",)},
    (("embed.W_E", "embed_in.weight", "same"),
     ("ln_final.w", "final_layer_norm.weight", "same"),
     ("ln_final.b", "final_layer_norm.bias", "same"),
     ("unembed.W_U", "/embed_out.weight", "transpose")),
    (("blocks.{l}.ln1.w", "layers.{l}.input_layernorm.weight", "same"),
     ("blocks.{l}.ln1.b", "layers.{l}.input_layernorm.bias", "same"),
     ("blocks.{l}.ln2.w", "layers.{l}.post_attention_layernorm.weight", "same"),
     ("blocks.{l}.ln2.b", "layers.{l}.post_attention_layernorm.bias", "same"),
     # One fused projection, per head [q | k | v] (rows h * 3 * Head + j * Head + e).
     ("blocks.{l}.attn.W_Q", "layers.{l}.attention.query_key_value.weight", "neox_q"),
     ("blocks.{l}.attn.W_K", "layers.{l}.attention.query_key_value.weight", "neox_k"),
     ("blocks.{l}.attn.W_V", "layers.{l}.attention.query_key_value.weight", "neox_v"),
     ("blocks.{l}.attn.b_Q", "layers.{l}.attention.query_key_value.bias", "neox_q"),
     ("blocks.{l}.attn.b_K", "layers.{l}.attention.query_key_value.bias", "neox_k"),
     ("blocks.{l}.attn.b_V", "layers.{l}.attention.query_key_value.bias", "neox_v"),
     ("blocks.{l}.attn.W_O", "layers.{l}.attention.dense.weight", "heads_out"),
     ("blocks.{l}.attn.b_O", "layers.{l}.attention.dense.bias", "same"),
     ("blocks.{l}.mlp.W_in", "layers.{l}.mlp.dense_h_to_4h.weight", "transpose"),
     ("blocks.{l}.mlp.b_in", "layers.{l}.mlp.dense_h_to_4h.bias", "same"),
     ("blocks.{l}.mlp.W_out", "layers.{l}.mlp.dense_4h_to_h.weight", "transpose"),
     ("blocks.{l}.mlp.b_out", "layers.{l}.mlp.dense_4h_to_h.bias", "same")),
    _ROTARY_BUFFERS + ("*.attention.bias", "*.attention.masked_bias"))

# Gemma 2 and 3: four norms a layer; local (sliding-window) and global layers alternate,
# global when (l + 1) % GlobalEvery == 0 (read from config.layer_types).
_GEMMA2_LAYER = tuple(row for row in _LLAMA_LAYER if row[0] != "blocks.{l}.ln2.w") + (
    ("blocks.{l}.ln1_post.w", "layers.{l}.post_attention_layernorm.weight", "same"),
    ("blocks.{l}.ln2.w", "layers.{l}.pre_feedforward_layernorm.weight", "same"),
    ("blocks.{l}.ln2_post.w", "layers.{l}.post_feedforward_layernorm.weight", "same"),
)
_GEMMA_TOP = tuple(row for row in _LLAMA_TOP if row[0] != "unembed.W_U")

GEMMA2 = Family(
    "gemma2", ("gemma2",), "gemma2.tn", "model.",
    {**_LLAMA_DIMS, "Window": ("sliding_window", "max_position_embeddings")},
    {**_LLAMA_CONSTS, "QueryScale": ("query_pre_attn_scalar",)},
    _GEMMA_TOP, _GEMMA2_LAYER, _ROTARY_BUFFERS + ("lm_head.weight",),
    derived={"GlobalEvery": ("layer_period", "full_attention"),
             "AttnCap": ("zero_if_null", "attn_logit_softcapping"),
             "FinalCap": ("zero_if_null", "final_logit_softcapping")},
    requires={"use_bidirectional_attention": (None, False)})

# GPT-J: parallel attention and MLP after one LayerNorm; interleaved partial rotary.
GPTJ = Family(
    "gptj", ("gptj",), "gptj.tn", "transformer.",
    {"Vocab": ("vocab_size",), "Model": ("n_embd", "hidden_size"),
     "Heads": ("n_head", "num_attention_heads"), "Hidden": ("n_inner",),
     "Layers": ("n_layer", "num_hidden_layers")},
    {"RotaryDim": ("rotary_dim",), "Eps": ("layer_norm_epsilon",)},
    (("embed.W_E", "wte.weight", "same"),
     ("ln_final.w", "ln_f.weight", "same"),
     ("ln_final.b", "ln_f.bias", "same"),
     ("unembed.W_U", "/lm_head.weight", "transpose"),
     ("unembed.b_U", "/lm_head.bias", "same")),
    (("blocks.{l}.ln1.w", "h.{l}.ln_1.weight", "same"),
     ("blocks.{l}.ln1.b", "h.{l}.ln_1.bias", "same"),
     ("blocks.{l}.attn.W_Q", "h.{l}.attn.q_proj.weight", "heads_in"),
     ("blocks.{l}.attn.W_K", "h.{l}.attn.k_proj.weight", "heads_in"),
     ("blocks.{l}.attn.W_V", "h.{l}.attn.v_proj.weight", "heads_in"),
     ("blocks.{l}.attn.W_O", "h.{l}.attn.out_proj.weight", "heads_out"),
     ("blocks.{l}.mlp.W_in", "h.{l}.mlp.fc_in.weight", "transpose"),
     ("blocks.{l}.mlp.b_in", "h.{l}.mlp.fc_in.bias", "same"),
     ("blocks.{l}.mlp.W_out", "h.{l}.mlp.fc_out.weight", "transpose"),
     ("blocks.{l}.mlp.b_out", "h.{l}.mlp.fc_out.bias", "same")),
    ("*.attn.bias", "*.attn.masked_bias", "*.embed_positions"),
    derived={"Hidden": ("or_times", "n_inner", "4", "n_embd")},
    requires={"activation_function": ("gelu_new", "gelu_pytorch_tanh")})

# BLOOM: ALiBi, a LayerNorm after the embedding, one fused qkv laid out per head as
# GPT-NeoX's is ([q | k | v] for each head).
BLOOM = Family(
    "bloom", ("bloom",), "bloom.tn", "transformer.",
    {"Vocab": ("vocab_size",), "Model": ("hidden_size", "n_embed"),
     "Heads": ("n_head", "num_attention_heads"), "Layers": ("n_layer", "num_hidden_layers")},
    {"Eps": ("layer_norm_epsilon",)},
    (("embed.W_E", "word_embeddings.weight", "same"),
     ("embed_ln.w", "word_embeddings_layernorm.weight", "same"),
     ("embed_ln.b", "word_embeddings_layernorm.bias", "same"),
     ("ln_final.w", "ln_f.weight", "same"),
     ("ln_final.b", "ln_f.bias", "same")),
    (("blocks.{l}.ln1.w", "h.{l}.input_layernorm.weight", "same"),
     ("blocks.{l}.ln1.b", "h.{l}.input_layernorm.bias", "same"),
     ("blocks.{l}.ln2.w", "h.{l}.post_attention_layernorm.weight", "same"),
     ("blocks.{l}.ln2.b", "h.{l}.post_attention_layernorm.bias", "same"),
     ("blocks.{l}.attn.W_Q", "h.{l}.self_attention.query_key_value.weight", "neox_q"),
     ("blocks.{l}.attn.W_K", "h.{l}.self_attention.query_key_value.weight", "neox_k"),
     ("blocks.{l}.attn.W_V", "h.{l}.self_attention.query_key_value.weight", "neox_v"),
     ("blocks.{l}.attn.b_Q", "h.{l}.self_attention.query_key_value.bias", "neox_q"),
     ("blocks.{l}.attn.b_K", "h.{l}.self_attention.query_key_value.bias", "neox_k"),
     ("blocks.{l}.attn.b_V", "h.{l}.self_attention.query_key_value.bias", "neox_v"),
     ("blocks.{l}.attn.W_O", "h.{l}.self_attention.dense.weight", "heads_out"),
     ("blocks.{l}.attn.b_O", "h.{l}.self_attention.dense.bias", "same"),
     ("blocks.{l}.mlp.W_in", "h.{l}.mlp.dense_h_to_4h.weight", "transpose"),
     ("blocks.{l}.mlp.b_in", "h.{l}.mlp.dense_h_to_4h.bias", "same"),
     ("blocks.{l}.mlp.W_out", "h.{l}.mlp.dense_4h_to_h.weight", "transpose"),
     ("blocks.{l}.mlp.b_out", "h.{l}.mlp.dense_4h_to_h.bias", "same")),
    ("lm_head.weight",),
    requires={"apply_residual_connection_post_layernorm": (None, False)})

# Gemma 3 (text): Gemma 2's table with q_norm and k_norm, a rotary base per layer type.
GEMMA3 = Family(
    "gemma3", ("gemma3_text",), "gemma3.tn", "model.",
    {**_LLAMA_DIMS, "Window": ("sliding_window", "max_position_embeddings")},
    {"LocalTheta": ("rope_parameters.sliding_attention.rope_theta", "rope_local_base_freq"),
     "GlobalTheta": ("rope_parameters.full_attention.rope_theta", "rope_theta"),
     "Eps": ("rms_norm_eps",), "QueryScale": ("query_pre_attn_scalar",)},
    _GEMMA_TOP, _GEMMA2_LAYER + (
        ("blocks.{l}.attn.q_norm.w", "layers.{l}.self_attn.q_norm.weight", "same"),
        ("blocks.{l}.attn.k_norm.w", "layers.{l}.self_attn.k_norm.weight", "same"),
    ), ("*.rotary_emb.*_inv_freq", "lm_head.weight"),
    derived=GEMMA2.derived, requires=GEMMA2.requires)

# Mixtral: Mistral's attention with a sparse mixture of experts (one tensor per expert
# in the checkpoint, stacked along `Experts`).
_LLAMA_ATTENTION = tuple(row for row in _LLAMA_LAYER if ".mlp." not in row[0])
MIXTRAL = Family(
    "mixtral", ("mixtral",), "mixtral.tn", "model.",
    {**_LLAMA_DIMS, "Window": ("sliding_window", "max_position_embeddings"),
     "Experts": ("num_local_experts",)},
    {**_LLAMA_CONSTS, "TopK": ("num_experts_per_tok",)},
    _LLAMA_TOP, _LLAMA_ATTENTION + (
        ("blocks.{l}.mlp.W_router", "layers.{l}.block_sparse_moe.gate.weight", "transpose"),
        ("blocks.{l}.mlp.W_gate", "layers.{l}.block_sparse_moe.experts.{x}.w1.weight",
         "transpose"),
        ("blocks.{l}.mlp.W_out", "layers.{l}.block_sparse_moe.experts.{x}.w2.weight",
         "transpose"),
        ("blocks.{l}.mlp.W_in", "layers.{l}.block_sparse_moe.experts.{x}.w3.weight",
         "transpose"),
    ), _ROTARY_BUFFERS, tied={"unembed.W_U": "model.embed_tokens.weight"})

# Qwen2-MoE: Qwen2's attention, routed experts and a sigmoid-gated shared expert.
QWEN2_MOE = Family(
    "qwen2_moe", ("qwen2_moe",), "qwen2_moe.tn", "model.",
    {**_LLAMA_DIMS, "Hidden": ("moe_intermediate_size",),
     "SharedHidden": ("shared_expert_intermediate_size",), "Experts": ("num_experts",)},
    {**_LLAMA_CONSTS, "TopK": ("num_experts_per_tok",)},
    _LLAMA_TOP, tuple(row for row in QWEN2.layer if ".mlp." not in row[0]) + (
        ("blocks.{l}.mlp.W_router", "layers.{l}.mlp.gate.weight", "transpose"),
        ("blocks.{l}.mlp.W_gate", "layers.{l}.mlp.experts.{x}.gate_proj.weight", "transpose"),
        ("blocks.{l}.mlp.W_in", "layers.{l}.mlp.experts.{x}.up_proj.weight", "transpose"),
        ("blocks.{l}.mlp.W_out", "layers.{l}.mlp.experts.{x}.down_proj.weight", "transpose"),
        ("blocks.{l}.mlp.W_shared_gate", "layers.{l}.mlp.shared_expert_gate.weight",
         "flatten"),
        ("blocks.{l}.mlp.shared.W_gate", "layers.{l}.mlp.shared_expert.gate_proj.weight",
         "transpose"),
        ("blocks.{l}.mlp.shared.W_in", "layers.{l}.mlp.shared_expert.up_proj.weight",
         "transpose"),
        ("blocks.{l}.mlp.shared.W_out", "layers.{l}.mlp.shared_expert.down_proj.weight",
         "transpose"),
    ), _ROTARY_BUFFERS, tied={"unembed.W_U": "model.embed_tokens.weight"},
    derived={"NormTopK": ("as_number", "norm_topk_prob")},
    requires={"qkv_bias": (None, True), "use_sliding_window": (None, False),
              "decoder_sparse_step": (None, 1), "mlp_only_layers": (None, [])})

FAMILIES = (LLAMA, QWEN2, GEMMA, PYTHIA, GEMMA2, GPTJ, BLOOM, GEMMA3, MIXTRAL, QWEN2_MOE)
