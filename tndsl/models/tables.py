"""Declarative per-family tables: what a Hugging Face checkpoint's config.json and
tensors mean for a family's `.tn` file.

A `Family` says, as data:

- (`derived`) a dim or const no single key holds, computed from the config (the period
  of alternating layer types);

- which config keys give each **dim** and **const** (`hidden_size` → `Model`), and how
  the rotary settings are read (`Rope`: transformers' own precedence, `rope_scaling`
  over `rope_parameters` over the legacy top-level keys);
- every other config key that **changes the computation**, as a `Setting`: the value
  transformers assumes when the key is absent, and for each value the `.tn` file
  implements the `Edit` that makes the program compute it (a box swapped, a clause
  dropped, a tensor read from elsewhere). A value with no entry is refused on load with
  a `WeightsError` naming the key, the value and the supported values;
- the keys that **do not** change the computation (`inert`: token ids, dropout, cache
  and training settings): read and ignored on purpose;
- a row per checkpoint tensor, `(tn_path, hf_name, layout)`, written once: `{l}` in
  both names runs over the layers; the family's prefix (`model.`) is put before each HF
  name unless it starts with `/` (a name outside the decoder, such as
  `/lm_head.weight`). Layouts (`LAYOUTS` in `tndsl.models.loading`) turn an HF tensor
  into the param's shape, read from the compiled program, so the table never states a
  size.

Adding a family is a `.tn` file in examples/ and an entry here (appended to
`FAMILIES`); `tests/test_all_families.py` then runs it through everything else
(verify, render, paths, hooks, the tensor-parallel plan, cost) and
`tests/test_families.py` against transformers. docs/families.md is generated from this
module (`tndsl families --markdown`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

Row = tuple[str, str, str]   # (tn path, HF tensor name, layout)


# ---- settings: config keys that change the computation -----------------------------

@dataclass(frozen=True)
class Edit:
    """What one value of a config key does to the family's program and table.

    replace: (text of the `.tn` file, its replacement), each text required to occur;
    dims: dim → config key that sizes it under this value (`Window` ← `sliding_window`);
    top, layer: tensor rows this value adds; drop: tn paths of rows it removes;
    tie: tn path → HF tensor read instead of the row's own (tied embeddings);
    ignore: checkpoint names (patterns) present but unused under this value."""
    replace: tuple[tuple[str, str], ...] = ()
    dims: Mapping[str, str] = field(default_factory=dict)
    top: tuple[Row, ...] = ()
    layer: tuple[Row, ...] = ()
    drop: tuple[str, ...] = ()
    tie: Mapping[str, str] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()


KEEP = Edit()   # the value the `.tn` file computes as written

POSITIVE_INT = "a positive integer"   # a `Setting.values` key matching any int > 0


@dataclass(frozen=True)
class Setting:
    """A config key that changes the computation. `values` maps each value the family
    implements to its `Edit`; `default` is transformers' value when the key is absent
    (a null value is a value: Mistral's `sliding_window: null` means no window)."""
    key: str
    effect: str                                  # in words, for docs/families.md
    default: object
    values: tuple[tuple[object, Edit], ...]
    # The value when it is not one key's: a function of the whole config (Qwen2's window).
    derive: Callable[[Mapping], object] | None = None

    def supported(self) -> list[str]:
        return [v if v is POSITIVE_INT else _json(v) for v, _ in self.values]

    def edit_for(self, value) -> Edit | None:
        for candidate, edit in self.values:
            if candidate is POSITIVE_INT:
                if type(value) is int and value > 0:
                    return edit
            elif type(candidate) is type(value) and candidate == value:
                return edit
        return None


def _json(value) -> str:
    import json
    return json.dumps(value)


@dataclass(frozen=True)
class Rope:
    """How the rotary settings are read. transformers merges them as: `rope_scaling`
    if given, else `rope_parameters`; `rope_theta` and the rotary fraction from there,
    else the legacy top-level keys, else the family's defaults. Only `rope_type:
    default` (no scaling) is implemented; other types are refused by name."""
    theta_keys: tuple[str, ...] = ("rope_theta",)
    theta_default: float = 10000.0
    fraction_keys: tuple[str, ...] = ("partial_rotary_factor",)
    fraction_default: float | None = None   # None: the file has no RotaryFraction const


# Activation names (transformers' ACT2FN) → the `.tn` box that computes the same
# function. Others (quick_gelu, gelu_10, mish, relu6, leaky_relu, ...) are refused.
ACTIVATIONS = {
    "gelu": "gelu", "gelu_python": "gelu",
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "relu": "relu", "silu": "silu", "swish": "silu", "sigmoid": "sigmoid",
    "tanh": "tanh", "linear": "identity",
}


def activation(key: str, default: str, *patterns: str,
               aliases: Mapping[str, str] | None = None) -> Setting:
    """A `Setting` for an activation key: each pattern is `.tn` text with `{box}` where
    the box name stands (`"gate[p, f] = {box}("`); the file is written with `default`'s
    box. `aliases` maps values this family reads as another (Gemma: `gelu` is taken as
    `gelu_pytorch_tanh`, as transformers does)."""
    names = {**{name: name for name in ACTIVATIONS}, **(aliases or {})}
    written = ACTIVATIONS[names[default]]
    values = []
    for name, target in names.items():
        box = ACTIVATIONS[target]
        values.append((name, KEEP if box == written else Edit(replace=tuple(
            (pattern.format(box=written), pattern.format(box=box)) for pattern in patterns))))
    return Setting(key, "the MLP's activation", default, tuple(values))


def flag(key: str, effect: str, default: bool, *, true: Edit | None = None,
         false: Edit | None = None) -> Setting:
    """A boolean key; a side left None is refused (not implemented)."""
    values = tuple((v, e) for v, e in ((True, true), (False, false)) if e is not None)
    return Setting(key, effect, default, values)


def only(key: str, effect: str, default, *values) -> Setting:
    """A key whose listed values (the default among them) the file computes as written."""
    return Setting(key, effect, default, tuple((v, KEEP) for v in values))


# Keys no family reads for the computation: bookkeeping, generation, training.
COMMON_INERT = (
    "_name_or_path", "architectures", "auto_map", "bos_token_id", "chunk_size_feed_forward",
    "decoder_start_token_id", "dtype", "eos_token_id", "id2label", "initializer_range",
    "is_encoder_decoder", "label2id", "model_type", "output_attentions",
    "output_hidden_states", "pad_token_id", "problem_type", "return_dict", "sep_token_id",
    "torch_dtype", "transformers_version", "use_cache", "attention_dropout",
    "hidden_dropout", "classifier_dropout", "embd_pdrop", "resid_pdrop", "attn_pdrop",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "tokenizer_class",
    "task_specific_params", "prefix", "finetuning_task", "num_labels",
    "cross_attention_hidden_size", "tie_encoder_decoder",
    "pruned_heads", "torchscript", "use_return_dict", "_attn_implementation",
    "_experts_implementation",
    "_attn_implementation_autoset", "_commit_hash", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "temperature", "top_k", "top_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
    "typical_p", "diversity_penalty", "num_beam_groups", "encoder_no_repeat_ngram_size",
    "tf_legacy_loss", "use_bfloat16",
)
# Rotary families take any sequence length: the learnt-position limit is not used.
_ROTARY_INERT = ("max_position_embeddings",)


# ---- the family --------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    example: str                         # the .tn file in examples/
    prefix: str                          # of the decoder's names in the checkpoint
    dims: dict[str, tuple[str, ...]]     # dim → config keys, the first present wins
    consts: dict[str, tuple[str, ...]]   # const → config keys, the first present wins
    top: tuple[Row, ...]
    layer: tuple[Row, ...]
    # Names that may be in a checkpoint and are not parameters (buffers, tied copies).
    ignored: tuple[str, ...] = ()
    # tn path → HF name to read when the first is absent.
    tied: dict[str, str] = field(default_factory=dict)
    settings: tuple[Setting, ...] = ()
    inert: tuple[str, ...] = ()          # family keys that do not change the computation
    rope: Rope | None = None
    hf_classes: tuple[str, ...] = ()     # the transformers classes it equals
    what: str = ""                       # what the family shows, for docs/families.md
    tolerance: float = 1e-10             # max |logits - HF| in float64, asserted in CI
    # A dim that learnt positions fix (GPT-2's Context = n_positions unless given).
    learnt_context: str | None = None
    # dim or const → (the config keys it reads, a function of the config giving its
    # value, or None to keep the file's): values no single key holds, such as the period
    # of alternating layer types (Gemma 2's local, global, local, ...).
    derived: Mapping[str, tuple[tuple[str, ...], Callable[[Mapping], object]]] = \
        field(default_factory=dict)
    # The dims its tensor-parallel plan shards (`tndsl cost --shard`), tested for each.
    shard: tuple[str, ...] = ("Heads", "Hidden")
    # Checks of values the keys above read that are typed right and still wrong (a query
    # scale of 0, more experts per token than experts): each raises a `WeightsError`
    # naming the key before the file is read, where the file would fail obscurely or,
    # worse, compute something.
    checks: tuple[Callable[[Mapping], None], ...] = ()

    @property
    def known_keys(self) -> set[str]:
        keys = {k.split(".")[0] for keys in (*self.dims.values(), *self.consts.values())
                for k in keys}
        keys |= {s.key for s in self.settings} | set(self.inert) | set(COMMON_INERT)
        if self.rope is not None:
            keys |= {"rope_parameters", "rope_scaling", *self.rope.theta_keys,
                     *self.rope.fraction_keys}
        for setting in self.settings:
            for _, edit in setting.values:
                keys |= set(edit.dims.values())
        keys |= {k for read, _ in self.derived.values() for k in read}
        return keys


# ---- Llama, Mistral, Qwen2, Gemma ---------------------------------------------------

_LLAMA_DIMS = {"Vocab": ("vocab_size",), "Model": ("hidden_size",),
               "Heads": ("num_attention_heads",),
               "KVHeads": ("num_key_value_heads", "num_attention_heads"),
               "Head": ("head_dim",), "Hidden": ("intermediate_size",),
               "Layers": ("num_hidden_layers",)}
_RMS_EPS = {"Eps": ("rms_norm_eps",)}
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
_UNEMBED_TIED = Edit(tie={"unembed.W_U": "model.embed_tokens.weight"})


def tie_word_embeddings(default: bool, embedding: str = "model.embed_tokens.weight",
                        unembedding: str = "unembed.W_U") -> Setting:
    """The unembedding is the embedding's transpose (True) or its own tensor (False)."""
    return flag("tie_word_embeddings", "the unembedding reads the embedding", default,
                true=Edit(tie={unembedding: embedding}), false=KEEP)


def attention_bias(q: str = "q_pre", k: str = "k_pre") -> Edit:
    """Biases on the q, k, v and o projections of a Llama-style attention whose query
    and key projections are the equations `q` and `k` (`q_pre`, or `q_proj` before a
    norm)."""
    return Edit(replace=(
        ("    param W_O[h: Heads, e: Head, m: Model]\n",
         "    param W_O[h: Heads, e: Head, m: Model]\n"
         "    param b_Q[h: Heads, e: Head] init zeros\n"
         "    param b_K[g: KVHeads, e: Head] init zeros\n"
         "    param b_V[g: KVHeads, e: Head] init zeros\n"
         "    param b_O[m: Model] init zeros\n"),
        (f"{q}[p, h, f] = x[p, m] * W_Q[h, m, f]",
         f"{q}[p, h, f] = x[p, m] * W_Q[h, m, f] + b_Q[h, f] * ones[p]"),
        (f"{k}[p, g, f] = x[p, m] * W_K[g, m, f]",
         f"{k}[p, g, f] = x[p, m] * W_K[g, m, f] + b_K[g, f] * ones[p]"),
        ("v[p, g, e] = x[p, m] * W_V[g, m, e]",
         "v[p, g, e] = x[p, m] * W_V[g, m, e] + b_V[g, e] * ones[p]"),
        ("    return z[p, h, e] * W_O[h, e, m]\n",
         "    return z[p, h, e] * W_O[h, e, m] + b_O[m] * ones[p]\n")),
        layer=(("blocks.{l}.attn.b_Q", "layers.{l}.self_attn.q_proj.bias", "heads_bias"),
               ("blocks.{l}.attn.b_K", "layers.{l}.self_attn.k_proj.bias", "heads_bias"),
               ("blocks.{l}.attn.b_V", "layers.{l}.self_attn.v_proj.bias", "heads_bias"),
               ("blocks.{l}.attn.b_O", "layers.{l}.self_attn.o_proj.bias", "same")))


_MLP_BIAS = Edit(replace=(
    ("    param W_out[f: Hidden, m: Model]\n",
     "    param W_out[f: Hidden, m: Model]\n"
     "    param b_gate[f: Hidden] init zeros\n"
     "    param b_in[f: Hidden] init zeros\n"
     "    param b_out[m: Model] init zeros\n"),
    ("x[p, m] * W_gate[m, f])", "x[p, m] * W_gate[m, f] + b_gate[f] * ones[p])"),
    ("pre[p, f] = x[p, m] * W_in[m, f]", "pre[p, f] = x[p, m] * W_in[m, f] + b_in[f] * ones[p]"),
    ("    return post[p, f] * W_out[f, m]\n",
     "    return post[p, f] * W_out[f, m] + b_out[m] * ones[p]\n")),
    layer=(("blocks.{l}.mlp.b_gate", "layers.{l}.mlp.gate_proj.bias", "same"),
           ("blocks.{l}.mlp.b_in", "layers.{l}.mlp.up_proj.bias", "same"),
           ("blocks.{l}.mlp.b_out", "layers.{l}.mlp.down_proj.bias", "same")))


def _llama_settings(act_default="silu", tie_default=False, q="q_pre",
                    k="k_pre") -> tuple[Setting, ...]:
    return (
        activation("hidden_act", act_default, "gate[p, f] = {box}("),
        tie_word_embeddings(tie_default),
        flag("attention_bias", "biases on the q, k, v and o projections", False,
             false=KEEP, true=attention_bias(q, k)),
        flag("mlp_bias", "biases on the MLP's projections", False, false=KEEP,
             true=_MLP_BIAS),
        only("pretraining_tp", "tensor-parallel slicing at pretraining (transformers "
             "5 ignores it)", 1, *range(1, 65)),
    )


_NO_WINDOW = Edit(replace=(("where s <= p and p - s < Window)", "where s <= p)"),))

LLAMA = Family(
    "llama", ("llama",), "llama.tn", "model.", _LLAMA_DIMS, _RMS_EPS, _LLAMA_TOP,
    _LLAMA_LAYER, _ROTARY_BUFFERS, settings=_llama_settings(), rope=Rope(),
    inert=_ROTARY_INERT,
    hf_classes=("LlamaForCausalLM",),
    what="RMSNorm, RoPE, GQA, SwiGLU")

MISTRAL = Family(
    "mistral", ("mistral",), "mistral.tn", "model.", _LLAMA_DIMS, _RMS_EPS, _LLAMA_TOP,
    _LLAMA_LAYER, _ROTARY_BUFFERS,
    settings=(*_llama_settings()[:2],
              Setting("sliding_window", "each query reads at most this many keys back",
                      4096, ((POSITIVE_INT, Edit(dims={"Window": "sliding_window"})),
                             (None, _NO_WINDOW)))),
    inert=_ROTARY_INERT, rope=Rope(), hf_classes=("MistralForCausalLM",),
    what="Llama with a sliding-window attention")


def _qwen_layer_types(config: Mapping) -> object:
    """transformers' Qwen2/Qwen3 rule: the window is on only with `use_sliding_window`
    (and a `sliding_window`), for the layers from `max_window_layers` on, unless
    `layer_types` lists each layer's kind. "none", "all", or the list when mixed."""
    kinds = config.get("layer_types")
    if kinds is None:
        window = config.get("sliding_window", 4096) if config.get("use_sliding_window") \
            else None
        layers, first = config.get("num_hidden_layers"), config.get("max_window_layers", 28)
        if not isinstance(layers, int) or not isinstance(first, int):
            return "none" if window is None else kinds
        kinds = ["sliding_attention" if window is not None and i >= first
                 else "full_attention" for i in range(layers)]
    if not isinstance(kinds, list):
        return kinds
    if all(kind == "full_attention" for kind in kinds):
        return "none"
    if all(kind == "sliding_attention" for kind in kinds):
        return "all"
    return kinds


def _qwen_window() -> tuple[Setting, ...]:
    """A window on every layer or on none is implemented; a mix of windowed and full
    layers (per-layer alternation) is refused."""
    return (Setting("layer_types", "which layers attend within a window of "
                    "`sliding_window` keys (from use_sliding_window, max_window_layers)",
                    "none", (("none", _NO_WINDOW),
                             ("all", Edit(dims={"Window": "sliding_window"}))),
                    derive=_qwen_layer_types),)


QWEN2 = Family(
    "qwen2", ("qwen2",), "qwen2.tn", "model.", _LLAMA_DIMS, _RMS_EPS, _LLAMA_TOP,
    _LLAMA_LAYER + (
        ("blocks.{l}.attn.b_Q", "layers.{l}.self_attn.q_proj.bias", "heads_bias"),
        ("blocks.{l}.attn.b_K", "layers.{l}.self_attn.k_proj.bias", "heads_bias"),
        ("blocks.{l}.attn.b_V", "layers.{l}.self_attn.v_proj.bias", "heads_bias"),
    ), _ROTARY_BUFFERS,
    settings=(*_llama_settings()[:2], *_qwen_window()),
    inert=("use_sliding_window", "sliding_window", "max_window_layers",  # layer_types
           *_ROTARY_INERT),
    rope=Rope(), hf_classes=("Qwen2ForCausalLM",),
    what="qkv biases, GQA, RoPE base 10⁶")

def untied(unembedding: str = "/lm_head.weight", **more) -> Edit:
    """A file whose logits read the embedding (`final[p, m] * embed.W_E[v, m]`) given
    its own unembedding `unembed.W_U`, read from the checkpoint's `unembedding`."""
    return Edit(replace=(
        ("param embed.W_E[v: Vocab, m: Model]",
         "param embed.W_E[v: Vocab, m: Model]\nparam unembed.W_U[m: Model, v: Vocab]"),
        ("logits[p, v] = final[p, m] * embed.W_E[v, m]",
         "logits[p, v] = final[p, m] * unembed.W_U[m, v]")),
        top=(("unembed.W_U", unembedding, "transpose"), *more.pop("top", ())), **more)


_GEMMA_UNTIED = untied()

GEMMA = Family(
    "gemma", ("gemma",), "gemma.tn", "model.", _LLAMA_DIMS, _RMS_EPS,
    tuple(row for row in _LLAMA_TOP if row[0] != "unembed.W_U"), _LLAMA_LAYER,
    _ROTARY_BUFFERS,
    settings=(
        activation("hidden_act", "gelu_pytorch_tanh", "gate[p, f] = {box}(",
                   aliases={"gelu": "gelu_pytorch_tanh"}),
        flag("tie_word_embeddings", "the unembedding reads the embedding", True,
             true=KEEP, false=_GEMMA_UNTIED),
        flag("attention_bias", "biases on the q, k, v and o projections", False,
             false=KEEP, true=attention_bias()),
        Setting("use_bidirectional_attention", "attention without the causal mask", None,
                ((None, KEEP), (False, KEEP))),
    ),
    inert=("hidden_activation", *_ROTARY_INERT),  # the first: read by no Gemma (1) class
    rope=Rope(), hf_classes=("GemmaForCausalLM",),
    what="GeGLU, scaled and tied embedding, `(1 + w)` norms, one KV head")

# ---- Pythia (GPT-NeoX) ---------------------------------------------------------------

_NEOX_SEQUENTIAL = Edit(replace=((
    "    return resid_pre[p, m] + Attention(LayerNorm(resid_pre) as ln1) as attn\n"
    "                           + MLP(LayerNorm(resid_pre) as ln2) as mlp",
    "    resid_mid[p, m] = resid_pre[p, m] + Attention(LayerNorm(resid_pre) as ln1) as attn\n"
    "    return resid_mid[p, m] + MLP(LayerNorm(resid_mid) as ln2) as mlp"),))

PYTHIA = Family(
    "pythia", ("gpt_neox",), "pythia.tn", "gpt_neox.",
    {"Vocab": ("vocab_size",), "Model": ("hidden_size",),
     "Heads": ("num_attention_heads",), "Hidden": ("intermediate_size",),
     "Layers": ("num_hidden_layers",)},
    {"Eps": ("layer_norm_eps",)},
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
    _ROTARY_BUFFERS + ("*.attention.bias", "*.attention.masked_bias"),
    settings=(
        activation("hidden_act", "gelu", "post[p, f] = {box}("),
        flag("use_parallel_residual", "attention and MLP read the same input (parallel) "
             "or one after the other", True, true=KEEP, false=_NEOX_SEQUENTIAL),
        tie_word_embeddings(False, "gpt_neox.embed_in.weight"),
        flag("attention_bias", "biases on the fused qkv and output projections", True,
             true=KEEP),
    ),
    rope=Rope(theta_keys=("rope_theta", "rotary_emb_base"),
              fraction_keys=("partial_rotary_factor", "rotary_pct"),
              fraction_default=0.25),
    inert=("is_decoder", *_ROTARY_INERT),   # GPTNeoXForCausalLM is causal either way
    hf_classes=("GPTNeoXForCausalLM",),
    what="parallel block, partial RoPE, LayerNorm with bias, untied unembedding")

# ---- GPT-2 -----------------------------------------------------------------------------

GPT2 = Family(
    "gpt2", ("gpt2",), "gpt2_small.tn", "",
    {"Vocab": ("vocab_size",), "Model": ("n_embd",), "Heads": ("n_head",),
     "Layers": ("n_layer",), "Context": ("n_positions",)},
    {}, (), (),   # read by tndsl.models.weights.load_hf_gpt2 (Conv1D layouts)
    settings=(
        activation("activation_function", "gelu_new", "post[p, f] = {box}("),
        flag("scale_attn_weights", "scores divided by sqrt(Head)", True, true=KEEP,
             false=Edit(replace=(("* k[s, h, e] / sqrt(Head)", "* k[s, h, e]"),))),
        flag("scale_attn_by_inverse_layer_idx", "scores of layer l divided by l + 1",
             False, false=KEEP),
        Setting("n_inner", "the MLP's width (null: 4 · n_embd)", None,
                ((None, KEEP),)),
        tie_word_embeddings(True, "wte.weight"),
        # Numerics only: transformers computes the scores in float32 under half inputs.
        only("reorder_and_upcast_attn", "float32 scores under half precision (the "
             "compiled model's own precision is the module's dtype)", False, False, True),
        only("layer_norm_epsilon", "LayerNorm's epsilon", 1e-5, 1e-5),
        only("add_cross_attention", "cross-attention layers", False, False),
    ),
    inert=("summary_activation", "summary_first_dropout", "summary_proj_to_labels",
           "summary_type", "summary_use_proj", "n_ctx"),
    hf_classes=("GPT2LMHeadModel",),
    what="LayerNorm, learnt positions, GELU (tanh)", learnt_context="Context")

# ---- Qwen3, OLMo-2: norms on the queries and keys --------------------------------------

_QK_NORM_ROWS = (
    ("blocks.{l}.attn.q_norm.w", "layers.{l}.self_attn.q_norm.weight", "same"),
    ("blocks.{l}.attn.k_norm.w", "layers.{l}.self_attn.k_norm.weight", "same"),
)

QWEN3 = Family(
    "qwen3", ("qwen3",), "qwen3.tn", "model.", _LLAMA_DIMS, _RMS_EPS, _LLAMA_TOP,
    _LLAMA_LAYER + _QK_NORM_ROWS, _ROTARY_BUFFERS,
    settings=(*_llama_settings(q="q_proj", k="k_proj")[:3], *_qwen_window()),
    inert=("use_sliding_window", "sliding_window", "max_window_layers",  # layer_types
           *_ROTARY_INERT),
    rope=Rope(), hf_classes=("Qwen3ForCausalLM",),
    what="RMSNorm on each query and key head, GQA, explicit head dim")

OLMO2 = Family(
    "olmo2", ("olmo2",), "olmo2.tn", "model.", _LLAMA_DIMS, _RMS_EPS, _LLAMA_TOP,
    (("blocks.{l}.ln1_post.w", "layers.{l}.post_attention_layernorm.weight", "same"),
     ("blocks.{l}.ln2_post.w", "layers.{l}.post_feedforward_layernorm.weight", "same"),
     *(row for row in _LLAMA_LAYER if ".ln" not in row[0]),
     ("blocks.{l}.attn.q_norm.w", "layers.{l}.self_attn.q_norm.weight", "heads_bias"),
     ("blocks.{l}.attn.k_norm.w", "layers.{l}.self_attn.k_norm.weight", "heads_bias")),
    _ROTARY_BUFFERS, settings=_llama_settings(q="q_proj", k="k_proj")[:3], rope=Rope(),
    inert=_ROTARY_INERT,
    hf_classes=("Olmo2ForCausalLM",),
    # Its q/k norms normalise over all heads at once: sharding heads would need a
    # gather inside the norm, so its plan shards the MLP's width only.
    shard=("Hidden",),
    what="norms after each sublayer, RMSNorm on the whole query and key")

# ---- Phi-3: fused projections in the checkpoint ------------------------------------------

PHI3 = Family(
    "phi3", ("phi3",), "phi3.tn", "model.", _LLAMA_DIMS, _RMS_EPS, _LLAMA_TOP,
    (("blocks.{l}.ln1.w", "layers.{l}.input_layernorm.weight", "same"),
     ("blocks.{l}.ln2.w", "layers.{l}.post_attention_layernorm.weight", "same"),
     ("blocks.{l}.attn.W_Q", "layers.{l}.self_attn.qkv_proj.weight", "stacked_q"),
     ("blocks.{l}.attn.W_K", "layers.{l}.self_attn.qkv_proj.weight", "stacked_k"),
     ("blocks.{l}.attn.W_V", "layers.{l}.self_attn.qkv_proj.weight", "stacked_v"),
     ("blocks.{l}.attn.W_O", "layers.{l}.self_attn.o_proj.weight", "heads_out"),
     ("blocks.{l}.mlp.W_gate", "layers.{l}.mlp.gate_up_proj.weight", "gate_half"),
     ("blocks.{l}.mlp.W_in", "layers.{l}.mlp.gate_up_proj.weight", "up_half"),
     ("blocks.{l}.mlp.W_out", "layers.{l}.mlp.down_proj.weight", "transpose")),
    _ROTARY_BUFFERS,
    settings=(*_llama_settings()[:2],
              Setting("sliding_window", "each query reads at most this many keys back",
                      None, ((None, _NO_WINDOW),
                             (POSITIVE_INT, Edit(dims={"Window": "sliding_window"}))))),
    # original_max_position_embeddings: read only by longrope scaling, refused;
    # attention_bias: in Phi-3 checkpoints, read by no Phi-3 class (no biases).
    inert=("original_max_position_embeddings", "attention_bias", *_ROTARY_INERT),
    rope=Rope(fraction_default=1.0), hf_classes=("Phi3ForCausalLM",),
    what="fused qkv and gate/up weights split on loading, partial RoPE")

# ---- GPT-BigCode: multi-query ---------------------------------------------------------

_BIGCODE_MHA_ROWS = tuple(
    (f"blocks.{{l}}.attn.{w}_{x}", f"h.{{l}}.attn.c_attn.{kind}", f"neox_{x.lower()}")
    for w, kind in (("W", "weight"), ("b", "bias")) for x in "QKV")

GPT_BIGCODE = Family(
    "gpt_bigcode", ("gpt_bigcode",), "gpt_bigcode.tn", "transformer.",
    {"Vocab": ("vocab_size",), "Model": ("n_embd", "hidden_size"),
     "Heads": ("n_head", "num_attention_heads"),
     "Layers": ("n_layer", "num_hidden_layers"),
     "Context": ("n_positions", "max_position_embeddings")},
    {"Eps": ("layer_norm_epsilon",)},
    (("embed.W_E", "wte.weight", "same"), ("pos_embed.W_pos", "wpe.weight", "same"),
     ("ln_final.w", "ln_f.weight", "same"), ("ln_final.b", "ln_f.bias", "same")),
    (("blocks.{l}.ln1.w", "h.{l}.ln_1.weight", "same"),
     ("blocks.{l}.ln1.b", "h.{l}.ln_1.bias", "same"),
     ("blocks.{l}.ln2.w", "h.{l}.ln_2.weight", "same"),
     ("blocks.{l}.ln2.b", "h.{l}.ln_2.bias", "same"),
     # Multi-query: c_attn's rows are [queries (Model) | key (Head) | value (Head)].
     ("blocks.{l}.attn.W_Q", "h.{l}.attn.c_attn.weight", "stacked_q"),
     ("blocks.{l}.attn.W_K", "h.{l}.attn.c_attn.weight", "stacked_k"),
     ("blocks.{l}.attn.W_V", "h.{l}.attn.c_attn.weight", "stacked_v"),
     ("blocks.{l}.attn.b_Q", "h.{l}.attn.c_attn.bias", "stacked_q"),
     ("blocks.{l}.attn.b_K", "h.{l}.attn.c_attn.bias", "stacked_k"),
     ("blocks.{l}.attn.b_V", "h.{l}.attn.c_attn.bias", "stacked_v"),
     ("blocks.{l}.attn.W_O", "h.{l}.attn.c_proj.weight", "heads_out"),
     ("blocks.{l}.attn.b_O", "h.{l}.attn.c_proj.bias", "same"),
     ("blocks.{l}.mlp.W_in", "h.{l}.mlp.c_fc.weight", "transpose"),
     ("blocks.{l}.mlp.b_in", "h.{l}.mlp.c_fc.bias", "same"),
     ("blocks.{l}.mlp.W_out", "h.{l}.mlp.c_proj.weight", "transpose"),
     ("blocks.{l}.mlp.b_out", "h.{l}.mlp.c_proj.bias", "same")),
    ("lm_head.weight", "*.attn.bias", "*.attn.masked_bias"),
    settings=(
        activation("activation_function", "gelu_pytorch_tanh", "post[p, f] = {box}("),
        # Without multi-query, c_attn is per head [q | k | v], as GPT-NeoX's.
        flag("multi_query", "one key/value head shared by all query heads", True,
             true=KEEP, false=Edit(dims={"KVHeads": "n_head"}, layer=_BIGCODE_MHA_ROWS,
                                   drop=tuple(r[0] for r in _BIGCODE_MHA_ROWS))),
        flag("scale_attn_weights", "scores divided by sqrt(Head)", True, true=KEEP,
             false=Edit(replace=(("* k[s, g, e] / sqrt(Head)", "* k[s, g, e]"),))),
        Setting("n_inner", "the MLP's width (null: 4 · n_embd)", None,
                ((None, KEEP), (POSITIVE_INT, Edit(
                    replace=(("dim Hidden = 4 * Model", "dim Hidden"),),
                    dims={"Hidden": "n_inner"})))),
        flag("tie_word_embeddings", "the unembedding reads the embedding", True,
             true=KEEP, false=untied()),
        # Numerics only (float32 softmax under half inputs).
        only("attention_softmax_in_fp32", "float32 softmax under half precision", True,
             True, False),
        only("scale_attention_softmax_in_fp32", "float32 scaling under half precision",
             True, True, False),
        only("add_cross_attention", "cross-attention layers", False, False),
    ),
    inert=("num_key_value_heads",),   # derived by transformers from multi_query
    hf_classes=("GPTBigCodeForCausalLM",),
    what="multi-query attention (one key/value head), learnt positions",
    learnt_context="Context")

# ---- StableLM -------------------------------------------------------------------------------

_STABLELM_PARALLEL = Edit(replace=((
    "    resid_mid[p, m] = resid_pre[p, m] + Attention(LayerNorm(resid_pre) as ln1) as attn\n"
    "    return resid_mid[p, m] + MLP(LayerNorm(resid_mid) as ln2) as mlp",
    "    normed[p, m] = LayerNorm(resid_pre) as ln1\n"
    "    return resid_pre[p, m] + Attention(normed) as attn + MLP(normed) as mlp"),),
    drop=("blocks.{l}.ln2.w", "blocks.{l}.ln2.b"))

_STABLELM_QKV_BIAS = Edit(replace=(
    ("    param W_O[h: Heads, e: Head, m: Model]\n",
     "    param W_O[h: Heads, e: Head, m: Model]\n"
     "    param b_Q[h: Heads, e: Head] init zeros\n"
     "    param b_K[g: KVHeads, e: Head] init zeros\n"
     "    param b_V[g: KVHeads, e: Head] init zeros\n"),
    ("q_pre[p, h, f] = x[p, m] * W_Q[h, m, f]",
     "q_pre[p, h, f] = x[p, m] * W_Q[h, m, f] + b_Q[h, f] * ones[p]"),
    ("k_pre[p, g, f] = x[p, m] * W_K[g, m, f]",
     "k_pre[p, g, f] = x[p, m] * W_K[g, m, f] + b_K[g, f] * ones[p]"),
    ("v[p, g, e] = x[p, m] * W_V[g, m, e]",
     "v[p, g, e] = x[p, m] * W_V[g, m, e] + b_V[g, e] * ones[p]")),
    layer=(("blocks.{l}.attn.b_Q", "layers.{l}.self_attn.q_proj.bias", "heads_bias"),
           ("blocks.{l}.attn.b_K", "layers.{l}.self_attn.k_proj.bias", "heads_bias"),
           ("blocks.{l}.attn.b_V", "layers.{l}.self_attn.v_proj.bias", "heads_bias")))

STABLELM = Family(
    "stablelm", ("stablelm",), "stablelm.tn", "model.",
    {k: v for k, v in _LLAMA_DIMS.items() if k != "Head"}, {"Eps": ("layer_norm_eps",)},
    (("embed.W_E", "embed_tokens.weight", "same"),
     ("ln_final.w", "norm.weight", "same"), ("ln_final.b", "norm.bias", "same"),
     ("unembed.W_U", "/lm_head.weight", "transpose")),
    (("blocks.{l}.ln1.w", "layers.{l}.input_layernorm.weight", "same"),
     ("blocks.{l}.ln1.b", "layers.{l}.input_layernorm.bias", "same"),
     ("blocks.{l}.ln2.w", "layers.{l}.post_attention_layernorm.weight", "same"),
     ("blocks.{l}.ln2.b", "layers.{l}.post_attention_layernorm.bias", "same"),
     *(row for row in _LLAMA_LAYER if ".ln" not in row[0])),
    _ROTARY_BUFFERS,
    settings=(
        activation("hidden_act", "silu", "gate[p, f] = {box}("),
        tie_word_embeddings(False),
        flag("use_parallel_residual", "attention and MLP read one LayerNorm's output "
             "(parallel) or one after the other", False, true=_STABLELM_PARALLEL,
             false=KEEP),
        flag("use_qkv_bias", "biases on the q, k and v projections", False,
             true=_STABLELM_QKV_BIAS, false=KEEP),
        flag("qk_layernorm", "a LayerNorm per query and key head", False, false=KEEP),
    ),
    inert=_ROTARY_INERT, rope=Rope(fraction_default=0.25),
    hf_classes=("StableLmForCausalLM",),
    what="LayerNorm with bias, partial RoPE, optional parallel block and qkv biases")

# ---- BERT ----------------------------------------------------------------------------------

BERT = Family(
    "bert", ("bert",), "bert.tn", "bert.",
    {"Vocab": ("vocab_size",), "Model": ("hidden_size",),
     "Heads": ("num_attention_heads",), "Hidden": ("intermediate_size",),
     "Layers": ("num_hidden_layers",), "Context": ("max_position_embeddings",)},
    {"Eps": ("layer_norm_eps",)},
    (("embed.W_E", "embeddings.word_embeddings.weight", "same"),
     ("embed.W_pos", "embeddings.position_embeddings.weight", "same"),
     ("embed.W_type", "embeddings.token_type_embeddings.weight", "first_row"),
     ("embed.ln.w", "embeddings.LayerNorm.weight", "same"),
     ("embed.ln.b", "embeddings.LayerNorm.bias", "same"),
     ("mlm_head.W", "/cls.predictions.transform.dense.weight", "transpose"),
     ("mlm_head.b", "/cls.predictions.transform.dense.bias", "same"),
     ("mlm_head.ln.w", "/cls.predictions.transform.LayerNorm.weight", "same"),
     ("mlm_head.ln.b", "/cls.predictions.transform.LayerNorm.bias", "same"),
     ("unembed.b_U", "/cls.predictions.bias", "same")),
    (*((f"blocks.{{l}}.attn.{w}_{x}", f"encoder.layer.{{l}}.attention.self.{n}.{kind}",
        layout) for x, n in (("Q", "query"), ("K", "key"), ("V", "value"))
       for w, kind, layout in (("W", "weight", "heads_in"), ("b", "bias", "heads_bias"))),
     ("blocks.{l}.attn.W_O", "encoder.layer.{l}.attention.output.dense.weight", "heads_out"),
     ("blocks.{l}.attn.b_O", "encoder.layer.{l}.attention.output.dense.bias", "same"),
     ("blocks.{l}.ln1.w", "encoder.layer.{l}.attention.output.LayerNorm.weight", "same"),
     ("blocks.{l}.ln1.b", "encoder.layer.{l}.attention.output.LayerNorm.bias", "same"),
     ("blocks.{l}.mlp.W_in", "encoder.layer.{l}.intermediate.dense.weight", "transpose"),
     ("blocks.{l}.mlp.b_in", "encoder.layer.{l}.intermediate.dense.bias", "same"),
     ("blocks.{l}.mlp.W_out", "encoder.layer.{l}.output.dense.weight", "transpose"),
     ("blocks.{l}.mlp.b_out", "encoder.layer.{l}.output.dense.bias", "same"),
     ("blocks.{l}.ln2.w", "encoder.layer.{l}.output.LayerNorm.weight", "same"),
     ("blocks.{l}.ln2.b", "encoder.layer.{l}.output.LayerNorm.bias", "same")),
    # Buffers, and the decoder's tied copies of the word embedding and the bias.
    ("*.position_ids", "*.token_type_ids", "cls.predictions.decoder.weight",
     "cls.predictions.decoder.bias"),
    settings=(
        activation("hidden_act", "gelu", "post[p, f] = {box}(", "hidden[p, m] = {box}("),
        # Untied, the decoder has its own weight and bias (cls.predictions.bias unused).
        flag("tie_word_embeddings", "the MLM decoder reads the word embedding", True,
             true=KEEP, false=untied(
                 "/cls.predictions.decoder.weight", drop=("unembed.b_U",),
                 top=(("unembed.b_U", "/cls.predictions.decoder.bias", "same"),),
                 ignore=("cls.predictions.bias",))),
        only("is_decoder", "a causal decoder instead of the encoder", False, False),
        only("add_cross_attention", "cross-attention layers", False, False),
    ),
    inert=("type_vocab_size", "position_embedding_type", "gradient_checkpointing"),
    hf_classes=("BertForMaskedLM",),
    what="bidirectional post-norm encoder, learnt positions, masked-LM head",
    learnt_context="Context")

# ---- Gemma 2 and 3: soft-capping, alternating local and global layers -------------------

def _layer_period(config: Mapping):
    """The period P of `layer_types` when layer l is global ("full_attention") exactly
    where (l + 1) % P == 0 (Gemma 2: local, global, ...; Gemma 3: five local, one
    global), or Layers + 1 when none is; None (the file's) without layer_types. Any other
    pattern is refused: the family files choose the kind as (l + 1) % GlobalEvery == 0."""
    from tndsl.models.weights import WeightsError
    kinds = config.get("layer_types")
    if kinds is None:
        return None
    if not isinstance(kinds, list) or not kinds or any(
            k not in ("full_attention", "sliding_attention") for k in kinds):
        raise WeightsError(f"config.json: layer_types = {_json(kinds)[:60]} is not "
                           "supported; supported: a list of \"sliding_attention\" and "
                           "\"full_attention\"")
    period = kinds.index("full_attention") + 1 if "full_attention" in kinds else len(kinds) + 1
    if [k == "full_attention" for k in kinds] != [(l + 1) % period == 0
                                                  for l in range(len(kinds))]:
        raise WeightsError(
            f"config.json: layer_types = {_json(kinds)[:60]} is not periodic; supported: "
            "a global (\"full_attention\") layer every P layers, the rest "
            "\"sliding_attention\" ((l + 1) % P == 0)")
    return period


def _positive(key: str, default) -> Callable[[Mapping], None]:
    """`key` (absent: `default`) must be a positive number: transformers divides by its
    square root (0 fails there, a negative one makes complex scores)."""
    def check(config):
        from tndsl.models.weights import WeightsError
        value = config.get(key, default)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            raise WeightsError(f"config.json: {key} = {_json(value)} is not supported; "
                               "supported: a positive number")
    return check


def _capped(key: str, default):
    """`key` is a soft-capping value: a number caps, null (or its absence, when the
    default is null) does not."""
    def derive(config):
        value = config.get(key, default)
        return "none" if value is None else "a number" if not isinstance(value, bool) and \
            isinstance(value, (int, float)) and value > 0 else value
    return derive


def _cap(key: str, const: str, written: str, default) -> Setting:
    return Setting(key, f"soft-capping at ±{key} (null: none)", default, (
        ("a number", KEEP),
        ("none", Edit(replace=((f"const {const} = {written}", f"const {const} = 0"),)))),
        derive=_capped(key, default))


_GEMMA2_LAYER = (
    *(row for row in _LLAMA_LAYER if row[0] != "blocks.{l}.ln2.w"),
    ("blocks.{l}.ln1_post.w", "layers.{l}.post_attention_layernorm.weight", "same"),
    ("blocks.{l}.ln2.w", "layers.{l}.pre_feedforward_layernorm.weight", "same"),
    ("blocks.{l}.ln2_post.w", "layers.{l}.post_feedforward_layernorm.weight", "same"),
)
_GEMMA_TOP = tuple(row for row in _LLAMA_TOP if row[0] != "unembed.W_U")
_GEMMA2_UNTIED = Edit(replace=(
    ("param embed.W_E[v: Vocab, m: Model]",
     "param embed.W_E[v: Vocab, m: Model]\nparam unembed.W_U[m: Model, v: Vocab]"),
    ("final[p, m] * embed.W_E[v, m]", "final[p, m] * unembed.W_U[m, v]")),
    top=(("unembed.W_U", "/lm_head.weight", "transpose"),))


def _gemma2_settings(attn_cap, final_cap, written_attn, written_final, bidirectional):
    return (
        activation("hidden_activation", "gelu_pytorch_tanh", "gate[p, f] = {box}("),
        flag("tie_word_embeddings", "the unembedding reads the embedding", True,
             true=KEEP, false=_GEMMA2_UNTIED),
        flag("attention_bias", "biases on the q, k, v and o projections", False,
             false=KEEP),
        Setting("sliding_window", "a local layer reads at most this many keys back", 4096,
                ((POSITIVE_INT, Edit(dims={"Window": "sliding_window"})),)),
        _cap("attn_logit_softcapping", "AttnCap", written_attn, attn_cap),
        _cap("final_logit_softcapping", "FinalCap", written_final, final_cap),
        Setting("use_bidirectional_attention", "attention without the causal mask",
                bidirectional, ((None, KEEP), (False, KEEP))),
    )


GEMMA2 = Family(
    "gemma2", ("gemma2",), "gemma2.tn", "model.", _LLAMA_DIMS,
    {**_RMS_EPS, "QueryScale": ("query_pre_attn_scalar",),
     "AttnCap": ("attn_logit_softcapping",), "FinalCap": ("final_logit_softcapping",)},
    _GEMMA_TOP, _GEMMA2_LAYER, _ROTARY_BUFFERS + ("lm_head.weight",),
    settings=_gemma2_settings(50.0, 30.0, "50", "30", None),
    inert=("hidden_act", *_ROTARY_INERT),   # Gemma 2 reads hidden_activation
    rope=Rope(), hf_classes=("Gemma2ForCausalLM",),
    checks=(_positive("query_pre_attn_scalar", 256),),
    what="soft-capped attention and logits, local and global layers alternating "
         "(`if`), norms after each sublayer, query scale",
    derived={"GlobalEvery": (("layer_types",), _layer_period)})


def _gemma3_rope(config: Mapping):
    """The rotary type of each layer type's settings: only "default" is implemented."""
    rope = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling")
    kinds = {(part or {}).get("rope_type", "default") for part in rope.values()
             if isinstance(part, Mapping)} if isinstance(rope, Mapping) else {rope}
    if scaling:
        kinds.add(scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, Mapping)
                  else scaling)
    return "default" if kinds <= {"default"} else sorted(map(str, kinds - {"default"}))[0]


# transformers' Gemma 3 attention does not soft-cap: it reads attn_logit_softcapping and
# never passes it on (5.x; the config-key test checks a number against it). So the key is
# inert here and the file's AttnCap stays 0, where Gemma 2 caps.
GEMMA3 = Family(
    "gemma3", ("gemma3_text",), "gemma3.tn", "model.", _LLAMA_DIMS,
    {**_RMS_EPS, "QueryScale": ("query_pre_attn_scalar",),
     "FinalCap": ("final_logit_softcapping",),
     "LocalTheta": ("rope_parameters.sliding_attention.rope_theta", "rope_local_base_freq"),
     "GlobalTheta": ("rope_parameters.full_attention.rope_theta", "rope_theta")},
    _GEMMA_TOP, _GEMMA2_LAYER + _QK_NORM_ROWS, ("*.rotary_emb.*inv_freq", "lm_head.weight"),
    settings=(*(s for s in _gemma2_settings(None, None, "0", "0", False)
                if s.key != "attn_logit_softcapping"),
              Setting("rope_parameters", "the rotary angles of each layer type", "default",
                      (("default", KEEP),), derive=_gemma3_rope)),
    inert=("hidden_act", *_ROTARY_INERT, "rope_scaling", "rope_local_base_freq", "rope_theta",
           "sliding_window_pattern", "_sliding_window_pattern", "attn_logit_softcapping"),
    checks=(_positive("query_pre_attn_scalar", 256),),
    hf_classes=("Gemma3ForCausalLM",),
    what="RMSNorm on each query and key head, a rotary base per layer type, five local "
         "layers to one global",
    derived={"GlobalEvery": (("layer_types",), _layer_period)})

# ---- GPT-J: interleaved partial rotary ---------------------------------------------------

def _gptj_fraction(config: Mapping):
    """The rotated part of each head: rotary_dim over the head size (n_embd / n_head)."""
    dim, model, heads = (config.get(k) for k in ("rotary_dim", "n_embd", "n_head"))
    if not all(type(v) is int and v > 0 for v in (dim, model, heads)) or model % heads:
        return None   # the file's; a bad value is refused by its Setting or by the dims
    from tndsl.models.weights import WeightsError
    if dim > model // heads:
        raise WeightsError(f"config.json: rotary_dim = {dim} is more than a head's "
                           f"{model // heads} entries; supported: at most the head size")
    return dim / (model // heads)


GPTJ = Family(
    "gptj", ("gptj",), "gptj.tn", "transformer.",
    {"Vocab": ("vocab_size",), "Model": ("n_embd",), "Heads": ("n_head",),
     "Layers": ("n_layer",)},
    {"Eps": ("layer_norm_epsilon",)},
    (("embed.W_E", "wte.weight", "same"),
     ("ln_final.w", "ln_f.weight", "same"), ("ln_final.b", "ln_f.bias", "same"),
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
    settings=(
        activation("activation_function", "gelu_new", "post[p, f] = {box}("),
        Setting("n_inner", "the MLP's width (null: 4 · n_embd)", None,
                ((None, KEEP), (POSITIVE_INT, Edit(
                    replace=(("dim Hidden = 4 * Model", "dim Hidden"),),
                    dims={"Hidden": "n_inner"})))),
        # null: transformers rotates over n_embd entries, more than a head has.
        Setting("rotary_dim", "the rotated entries of each head", 64,
                ((POSITIVE_INT, KEEP),)),
        flag("tie_word_embeddings", "the unembedding reads the embedding", False,
             false=KEEP),
    ),
    inert=("n_positions",),
    derived={"RotaryFraction": (("rotary_dim", "n_embd", "n_head"), _gptj_fraction)},
    hf_classes=("GPTJForCausalLM",),
    what="parallel attention and MLP, interleaved partial RoPE, unembedding bias")

# ---- BLOOM: ALiBi ------------------------------------------------------------------------

BLOOM = Family(
    "bloom", ("bloom",), "bloom.tn", "transformer.",
    {"Vocab": ("vocab_size",), "Model": ("hidden_size", "n_embed"),
     "Heads": ("n_head", "num_attention_heads"), "Layers": ("n_layer", "num_hidden_layers")},
    {"Eps": ("layer_norm_epsilon",)},
    (("embed.W_E", "word_embeddings.weight", "same"),
     ("embed_ln.w", "word_embeddings_layernorm.weight", "same"),
     ("embed_ln.b", "word_embeddings_layernorm.bias", "same"),
     ("ln_final.w", "ln_f.weight", "same"), ("ln_final.b", "ln_f.bias", "same")),
    (("blocks.{l}.ln1.w", "h.{l}.input_layernorm.weight", "same"),
     ("blocks.{l}.ln1.b", "h.{l}.input_layernorm.bias", "same"),
     ("blocks.{l}.ln2.w", "h.{l}.post_attention_layernorm.weight", "same"),
     ("blocks.{l}.ln2.b", "h.{l}.post_attention_layernorm.bias", "same"),
     *((f"blocks.{{l}}.attn.{w}_{x}", f"h.{{l}}.self_attention.query_key_value.{kind}",
        f"neox_{x.lower()}") for w, kind in (("W", "weight"), ("b", "bias")) for x in "QKV"),
     ("blocks.{l}.attn.W_O", "h.{l}.self_attention.dense.weight", "heads_out"),
     ("blocks.{l}.attn.b_O", "h.{l}.self_attention.dense.bias", "same"),
     ("blocks.{l}.mlp.W_in", "h.{l}.mlp.dense_h_to_4h.weight", "transpose"),
     ("blocks.{l}.mlp.b_in", "h.{l}.mlp.dense_h_to_4h.bias", "same"),
     ("blocks.{l}.mlp.W_out", "h.{l}.mlp.dense_4h_to_h.weight", "transpose"),
     ("blocks.{l}.mlp.b_out", "h.{l}.mlp.dense_4h_to_h.bias", "same")),
    ("lm_head.weight",),
    settings=(
        only("apply_residual_connection_post_layernorm", "the residual taken after the "
             "LayerNorm", False, False),
        flag("tie_word_embeddings", "the unembedding reads the embedding", True,
             true=KEEP),
    ),
    # Numerics or training only: tensor-parallel slicing, fused softmax kernels.
    inert=("pretraining_tp", "slow_but_exact", "masked_softmax_fusion", "offset_alibi",
           "n_inner", "seq_length"),
    hf_classes=("BloomForCausalLM",),
    what="ALiBi position biases, LayerNorm after the embedding, fused per-head qkv")

# ---- Mixtral and Qwen2-MoE: top-k routing over experts --------------------------------

def _top_k(experts: str, default: int) -> Callable[[Mapping], None]:
    """`num_experts_per_tok` (absent: `default`) must be between 1 and the number of
    experts: transformers' top-k fails with more, and the file would take every expert."""
    def check(config):
        from tndsl.models.weights import WeightsError
        k, n = config.get("num_experts_per_tok", default), config.get(experts)
        if type(k) is int and type(n) is int and not 0 < k <= n:
            raise WeightsError(f"config.json: num_experts_per_tok = {k} is not supported "
                               f"with {experts} = {n}; supported: 1 to {n}")
    return check


_LLAMA_ATTENTION = tuple(row for row in _LLAMA_LAYER if ".mlp." not in row[0])
_MOE_INERT = ("router_aux_loss_coef", "output_router_logits", "router_jitter_noise")

MIXTRAL = Family(
    "mixtral", ("mixtral",), "mixtral.tn", "model.",
    {**_LLAMA_DIMS, "Experts": ("num_local_experts",)},
    {**_RMS_EPS, "TopK": ("num_experts_per_tok",)}, _LLAMA_TOP, _LLAMA_ATTENTION + (
        ("blocks.{l}.mlp.W_router", "layers.{l}.block_sparse_moe.gate.weight", "transpose"),
        ("blocks.{l}.mlp.W_gate", "layers.{l}.block_sparse_moe.experts.{x}.w1.weight",
         "transpose"),
        ("blocks.{l}.mlp.W_out", "layers.{l}.block_sparse_moe.experts.{x}.w2.weight",
         "transpose"),
        ("blocks.{l}.mlp.W_in", "layers.{l}.block_sparse_moe.experts.{x}.w3.weight",
         "transpose"),
    ), _ROTARY_BUFFERS,
    settings=(activation("hidden_act", "silu", "gate[p, x, f] = {box}("),
              tie_word_embeddings(False),
              Setting("sliding_window", "each query reads at most this many keys back",
                      None, ((None, _NO_WINDOW),
                             (POSITIVE_INT, Edit(dims={"Window": "sliding_window"}))))),
    inert=_MOE_INERT + _ROTARY_INERT, rope=Rope(), hf_classes=("MixtralForCausalLM",),
    checks=(_top_k("num_local_experts", 2),),
    what="sparse mixture of SwiGLU experts (top-k routing, dispatched), sliding window")

QWEN2_MOE = Family(
    "qwen2_moe", ("qwen2_moe",), "qwen2_moe.tn", "model.",
    {**_LLAMA_DIMS, "Hidden": ("moe_intermediate_size",),
     "SharedHidden": ("shared_expert_intermediate_size",), "Experts": ("num_experts",)},
    {**_RMS_EPS, "TopK": ("num_experts_per_tok",)}, _LLAMA_TOP,
    tuple(row for row in QWEN2.layer if ".mlp." not in row[0]) + (
        ("blocks.{l}.mlp.W_router", "layers.{l}.mlp.gate.weight", "transpose"),
        ("blocks.{l}.mlp.W_gate", "layers.{l}.mlp.experts.{x}.gate_proj.weight", "transpose"),
        ("blocks.{l}.mlp.W_in", "layers.{l}.mlp.experts.{x}.up_proj.weight", "transpose"),
        ("blocks.{l}.mlp.W_out", "layers.{l}.mlp.experts.{x}.down_proj.weight", "transpose"),
        ("blocks.{l}.mlp.W_shared_gate", "layers.{l}.mlp.shared_expert_gate.weight",
         "flatten"),
        *((f"blocks.{{l}}.mlp.shared.{w}", f"layers.{{l}}.mlp.shared_expert.{hf}.weight",
           "transpose") for w, hf in (("W_gate", "gate_proj"), ("W_in", "up_proj"),
                                      ("W_out", "down_proj"))),
    ), _ROTARY_BUFFERS,
    settings=(activation("hidden_act", "silu", "gate[p, x, f] = {box}(",
                         "gate[p, u] = {box}("),
              tie_word_embeddings(False),
              flag("norm_topk_prob", "the top-k gates renormalised to sum to 1", False,
                   false=KEEP, true=Edit(replace=(("const NormTopK = 0", "const NormTopK = 1"),))),
              only("qkv_bias", "biases on the q, k and v projections", True, True),
              only("use_sliding_window", "a sliding window on some layers", False, False),
              only("decoder_sparse_step", "every how many layers is a mixture of experts",
                   1, 1),
              only("mlp_only_layers", "layers with a dense MLP instead", [], [])),
    inert=_MOE_INERT + _ROTARY_INERT + ("intermediate_size", "sliding_window",
                                        "max_window_layers", "layer_types"),
    rope=Rope(), hf_classes=("Qwen2MoeForCausalLM",),
    checks=(_top_k("num_experts", 4),),
    what="routed experts (top-k, renormalised or not) beside a sigmoid-gated shared expert")

FAMILIES = (GPT2, LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA, OLMO2, PHI3, PYTHIA, STABLELM,
            GPT_BIGCODE, BERT, GEMMA2, GEMMA3, GPTJ, BLOOM, MIXTRAL, QWEN2_MOE)
