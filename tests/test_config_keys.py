"""The config-key differential test (issue 22): every config key a family's table lists
as changing the computation, varied over values transformers accepts, either loads
equal to transformers' float64 logits or is refused with a `WeightsError` naming the
key; never a silent difference. The values come from transformers (its activation
registry) and from its config classes' documented options, not from the tables; a
test checks that every key the tables list is varied here, so a new setting cannot go
untested. The first variant of each key is the family's own default or a common value
and must load, as must the values in MUST_LOAD. The default run takes each family's
default, the values that must load and one refusal per family; the rest (the full grid
of activations, every flag) run with the slow tests."""
import json
import warnings

import pytest
import torch
from transformers.activations import ACT2CLS

import tndsl
from hf_models import SPECS, build, float64_oracle, logits, save, tokens
from tndsl.models import WeightsError
from tndsl.models import ConfigWarning
from tndsl.models.tables import FAMILIES


ACTIVATIONS = sorted(ACT2CLS)
ROPE = [{"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
        {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}]
BOOL = [True, False]


def _values(key, values):
    return [{key: value} for value in values]


def _activation(key, default):
    return _values(key, [default, "relu", "quick_gelu"]
                   + [a for a in ACTIVATIONS if a not in (default, "relu", "quick_gelu")])


def _llama_like(act="silu", tie=False):
    return {"hidden_act": _activation("hidden_act", act),
            "tie_word_embeddings": _values("tie_word_embeddings", [tie, not tie]),
            "attention_bias": _values("attention_bias", [False, True]),
            "rope": [{}] + ROPE,
            # No window in Llama: a context shorter than the input changes nothing.
            "max_position_embeddings": _values("max_position_embeddings", [64, 4])}


_QWEN_WINDOW = [{}, {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 0},
                {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1},
                {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 2},
                {"use_sliding_window": False, "sliding_window": 3, "max_window_layers": 0},
                {"layer_types": ["sliding_attention", "sliding_attention"],
                 "use_sliding_window": True, "sliding_window": 2}]

VARIED = {
    "llama": {**_llama_like(), "mlp_bias": _values("mlp_bias", BOOL[::-1]),
              "pretraining_tp": _values("pretraining_tp", [1, 2])},
    "mistral": {**{k: v for k, v in _llama_like().items() if k != "attention_bias"},
                "sliding_window": _values("sliding_window", [4, None, 1000, 1])},
    "qwen2": {**{k: v for k, v in _llama_like().items() if k != "attention_bias"},
              "layer_types": _QWEN_WINDOW},
    "qwen3": {**_llama_like(), "layer_types": _QWEN_WINDOW},
    "gemma": {**_llama_like("gelu_pytorch_tanh", True),
              "use_bidirectional_attention": _values("use_bidirectional_attention",
                                                     [None, False, True])},
    "olmo2": _llama_like(),
    "phi3": {**{k: v for k, v in _llama_like().items() if k != "attention_bias"},
             "sliding_window": _values("sliding_window", [5, None, 1000]),
             # Phi-3 accepts only longrope scaling (factors per rotated pair: 8 / 2).
             "rope": [{}, {"rope_scaling": {"rope_type": "longrope",
                                            "short_factor": [1.0, 1.5, 2.0, 2.5],
                                            "long_factor": [2.0, 2.0, 3.0, 3.0]},
                       "original_max_position_embeddings": 32}]},
    "pythia": {"hidden_act": _activation("hidden_act", "gelu"),
               "use_parallel_residual": _values("use_parallel_residual", BOOL),
               "tie_word_embeddings": _values("tie_word_embeddings", BOOL[::-1]),
               "attention_bias": _values("attention_bias", BOOL),
               "rope": [{}] + ROPE},
    "stablelm": {"hidden_act": _activation("hidden_act", "silu"),
                 "tie_word_embeddings": _values("tie_word_embeddings", BOOL[::-1]),
                 "use_parallel_residual": _values("use_parallel_residual", BOOL),
                 "use_qkv_bias": _values("use_qkv_bias", BOOL),
                 "qk_layernorm": _values("qk_layernorm", BOOL[::-1]),
                 "rope": [{}] + ROPE},
    "gpt2": {"activation_function": _activation("activation_function", "gelu_new"),
             "scale_attn_weights": _values("scale_attn_weights", BOOL),
             "scale_attn_by_inverse_layer_idx": _values("scale_attn_by_inverse_layer_idx",
                                                        BOOL[::-1]),
             "n_inner": _values("n_inner", [None, 80]),
             "tie_word_embeddings": _values("tie_word_embeddings", BOOL),
             "reorder_and_upcast_attn": _values("reorder_and_upcast_attn", BOOL[::-1]),
             "layer_norm_epsilon": _values("layer_norm_epsilon", [1e-5, 1e-6]),
             "add_cross_attention": _values("add_cross_attention", [False])},
    "gpt_bigcode": {
        "activation_function": _activation("activation_function", "gelu_pytorch_tanh"),
        "multi_query": _values("multi_query", BOOL),
        "scale_attn_weights": _values("scale_attn_weights", BOOL),
        "n_inner": _values("n_inner", [None, 80]),
        "tie_word_embeddings": _values("tie_word_embeddings", BOOL),
        "attention_softmax_in_fp32": _values("attention_softmax_in_fp32", BOOL),
        "scale_attention_softmax_in_fp32": _values("scale_attention_softmax_in_fp32",
                                                   BOOL),
        "add_cross_attention": _values("add_cross_attention", [False])},
    "bert": {"hidden_act": _activation("hidden_act", "gelu"),
             "tie_word_embeddings": _values("tie_word_embeddings", BOOL),
             "is_decoder": _values("is_decoder", [False, True]),
             "add_cross_attention": _values("add_cross_attention", [False])},
    # The families of issue 26's constructs (hf_models.SPECS: Gemma 2 soft-capped at 3 and
    # 5 with a window of 4, Gemma 3 uncapped, GPT-J rotating 6 of 16 entries, ...).
    "gemma2": {
        "hidden_activation": _activation("hidden_activation", "gelu_pytorch_tanh"),
        "tie_word_embeddings": _values("tie_word_embeddings", BOOL),
        "attention_bias": _values("attention_bias", BOOL[::-1]),
        # 1: each query reads itself only; 1000: longer than the input, no window at all.
        "sliding_window": _values("sliding_window", [4, 1000, 1, 2]),
        "attn_logit_softcapping": _values("attn_logit_softcapping", [3.0, None, 50.0]),
        "final_logit_softcapping": _values("final_logit_softcapping", [5.0, None, 30.0]),
        "use_bidirectional_attention": _values("use_bidirectional_attention",
                                               [None, False, True]),
        # A const, not a setting: scores divided by its square root (an int, as
        # transformers' config requires; 7 is no square).
        "query_pre_attn_scalar": _values("query_pre_attn_scalar", [24, 7]),
        "rope": [{}] + ROPE},
    "gemma3": {
        "hidden_activation": _activation("hidden_activation", "gelu_pytorch_tanh"),
        "tie_word_embeddings": _values("tie_word_embeddings", BOOL),
        "attention_bias": _values("attention_bias", BOOL[::-1]),
        "sliding_window": _values("sliding_window", [4, 1000, 1]),
        # Inert: transformers' Gemma 3 attention does not soft-cap (see the table).
        "attn_logit_softcapping": _values("attn_logit_softcapping", [None, 3.0]),
        "final_logit_softcapping": _values("final_logit_softcapping", [None, 5.0]),
        "use_bidirectional_attention": _values("use_bidirectional_attention",
                                               [False, None, True]),
        # Rotary scaling on the global layers (Gemma 3 4B's linear factor 8).
        "rope_parameters": [{}, {"rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 5e4},
            "sliding_attention": {"rope_type": "default", "rope_theta": 300.0}}}]},
    "gptj": {
        "activation_function": _activation("activation_function", "gelu_new"),
        "n_inner": _values("n_inner", [None, 80]),
        # At most a head's 16 entries, and even (transformers rotates pairs; null or more
        # than a head fails in transformers itself).
        "rotary_dim": _values("rotary_dim", [6, 16, 2]),
        "tie_word_embeddings": _values("tie_word_embeddings", BOOL[::-1])},
    "bloom": {
        "apply_residual_connection_post_layernorm": _values(
            "apply_residual_connection_post_layernorm", BOOL[::-1]),
        "tie_word_embeddings": _values("tie_word_embeddings", BOOL)},
    "mixtral": {"hidden_act": _activation("hidden_act", "silu"),
                "tie_word_embeddings": _values("tie_word_embeddings", BOOL[::-1]),
                "sliding_window": _values("sliding_window", [None, 4, 1000, 1]),
                # A const, not a setting: every one of the 4 experts, or one.
                "num_experts_per_tok": _values("num_experts_per_tok", [2, 4, 1]),
                "rope": [{}] + ROPE},
    "qwen2_moe": {"hidden_act": _activation("hidden_act", "silu"),
                  "tie_word_embeddings": _values("tie_word_embeddings", BOOL[::-1]),
                  "norm_topk_prob": _values("norm_topk_prob", BOOL[::-1]),
                  "qkv_bias": _values("qkv_bias", BOOL),
                  "use_sliding_window": [{}, {"use_sliding_window": True,
                                              "sliding_window": 3, "max_window_layers": 0}],
                  "decoder_sparse_step": _values("decoder_sparse_step", [1, 2]),
                  "mlp_only_layers": _values("mlp_only_layers", [[], [0]]),
                  "num_experts_per_tok": _values("num_experts_per_tok", [2, 4, 1]),
                  "rope": [{}] + ROPE},
}


# Values that must be honoured, not refused: issue 22's silent wrong answers, and the
# variants the families implement.
MUST_LOAD = {
    ("llama", "hidden_act", '"gelu"'), ("llama", "max_position_embeddings", "4"),
    ("llama", "tie_word_embeddings", "true"), ("mistral", "sliding_window", "null"),
    ("pythia", "use_parallel_residual", "false"), ("pythia", "hidden_act", '"gelu_new"'),
    ("pythia", "tie_word_embeddings", "true"), ("gpt2", "activation_function", '"relu"'),
    ("gpt2", "scale_attn_weights", "false"), ("gemma", "tie_word_embeddings", "false"),
    ("gpt_bigcode", "multi_query", "false"), ("gpt_bigcode", "n_inner", "80"),
    ("gpt_bigcode", "tie_word_embeddings", "false"), ("bert", "tie_word_embeddings", "false"),
    ("bert", "hidden_act", '"relu"'), ("stablelm", "use_parallel_residual", "true"),
    ("phi3", "sliding_window", "null"), ("qwen3", "tie_word_embeddings", "true"),
    ("olmo2", "tie_word_embeddings", "true"), ("llama", "attention_bias", "true"),
    ("llama", "mlp_bias", "true"), ("qwen3", "attention_bias", "true"),
    ("olmo2", "attention_bias", "true"), ("gemma", "attention_bias", "true"),
    ("gemma2", "tie_word_embeddings", "false"), ("gemma2", "sliding_window", "1000"),
    ("gemma2", "attn_logit_softcapping", "null"), ("gemma2", "final_logit_softcapping", "null"),
    ("gemma2", "use_bidirectional_attention", "false"),
    ("gemma3", "tie_word_embeddings", "false"), ("gemma3", "sliding_window", "1000"),
    ("gemma3", "attn_logit_softcapping", "3.0"),
    ("gptj", "n_inner", "80"), ("gptj", "rotary_dim", "16"),
    ("mixtral", "sliding_window", "4"), ("mixtral", "tie_word_embeddings", "true"),
    ("qwen2_moe", "norm_topk_prob", "true"), ("qwen2_moe", "tie_word_embeddings", "true"),
    ("mixtral", "num_experts_per_tok", "4"), ("qwen2_moe", "num_experts_per_tok", "1"),
}
# The refusal the default run takes of a family without rotary scaling to refuse.
REFUSED_FAST = {("gemma3", "rope_parameters"), ("gptj", "tie_word_embeddings"),
                ("bloom", "apply_residual_connection_post_layernorm")}
MUST_LOAD_WINDOWS = ({"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 0},
                     {"use_sliding_window": False, "sliding_window": 3, "max_window_layers": 0})


def _must_load(family, key, overrides) -> bool:
    if key == "layer_types":
        return not overrides or overrides in MUST_LOAD_WINDOWS
    return len(overrides) == 1 and (family, key, json.dumps(overrides.get(key))) in MUST_LOAD


def _cases():
    for family, keys in VARIED.items():
        for n, (key, variants) in enumerate(keys.items()):
            for i, overrides in enumerate(variants):
                label = ",".join(f"{k}={json.dumps(v)}" for k, v in overrides.items())
                must = i == 0 or _must_load(family, key, overrides)
                # The default run: each family's default, the values that must load,
                # one refused value (rotary scaling, or REFUSED_FAST's); the rest with
                # the slow tests.
                fast = (i == 0 and n == 0) or (must and i > 0) or (i == 1 and (
                    key == "rope" or (family, key) in REFUSED_FAST))
                yield pytest.param(family, key, overrides, must,
                                   id=f"{family}-{key}-{label or 'default'}",
                                   marks=() if fast else (pytest.mark.slow,))


def test_every_listed_setting_is_varied():
    for family in FAMILIES:
        if family.name not in SPECS:
            continue   # families added without a case fail test_every_family_has_a_case
        varied = VARIED.get(family.name, {})
        missing = {s.key for s in family.settings} - set(varied)
        assert not missing, f"{family.name}: settings not varied here: {missing}"
        if family.rope is not None:
            assert "rope" in varied, family.name


@pytest.mark.parametrize("family, key, overrides, must_load", list(_cases()))
def test_a_setting_is_honoured_or_refused(family, key, overrides, must_load, tmp_path):
    model_class, config = build(family, **overrides)
    hf = save(model_class, config, tmp_path)
    oracle = float64_oracle(hf.to(torch.float64))
    ids = tokens(config.vocab_size)
    expected = logits(oracle, ids)
    tolerance = next(f.tolerance for f in FAMILIES if f.name == family)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConfigWarning)
            module = tndsl.from_pretrained(tmp_path, torch.float64)
    except WeightsError as e:
        assert not must_load, str(e)
        message = str(e)
        named = [k for k in (key, *overrides) if k in message]
        assert named, f"the refusal names none of {key}, {list(overrides)}: {message}"
        assert "supported" in message, message
        return
    with torch.no_grad():
        difference = (module(ids) - expected).abs().max().item()
    assert difference < tolerance, (overrides, difference)


# Values transformers itself cannot run (so no oracle): a query scale of 0 fails there
# and a negative one makes complex scores; top-k over more experts than there are fails.
# tndsl must refuse them by name, not fail inside the file or pick every expert.
@pytest.mark.parametrize("family, key, value", [
    ("gemma2", "query_pre_attn_scalar", 0), ("gemma2", "query_pre_attn_scalar", -4.0),
    ("gemma3", "query_pre_attn_scalar", 0), ("mixtral", "num_experts_per_tok", 5),
    ("mixtral", "num_experts_per_tok", 0), ("qwen2_moe", "num_experts_per_tok", 5),
    ("qwen2_moe", "num_experts_per_tok", -1)])
def test_a_value_transformers_cannot_run_is_refused(family, key, value, tmp_path):
    model_class, config = build(family)
    save(model_class, config, tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data))
    with pytest.raises(WeightsError, match=f"{key} = {value} is not supported.*; supported"):
        tndsl.from_pretrained(tmp_path)


@pytest.mark.parametrize("value", ["linear", ["linear", 2.0], 3])
def test_rope_scaling_that_is_not_an_object_is_refused_as_transformers_does(value, tmp_path):
    model_class, config = build("llama")
    save(model_class, config, tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data["rope_scaling"] = value
    path.write_text(json.dumps(data))
    with pytest.raises(WeightsError, match="rope_scaling .* is not an object"):
        tndsl.from_pretrained(tmp_path)


def test_linear_rope_scaling_beside_rope_parameters_is_refused(tmp_path):
    model_class, config = build("llama")
    save(model_class, config, tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    assert data["rope_parameters"]["rope_type"] == "default"
    data["rope_scaling"] = {"type": "linear", "factor": 4.0}   # wins in transformers
    path.write_text(json.dumps(data))
    with pytest.raises(WeightsError, match=r'rope_scaling.rope_type = "linear" is not '
                                           r'supported; supported: "default"'):
        tndsl.from_pretrained(tmp_path)


def test_a_key_no_table_lists_is_warned_about(tmp_path):
    model_class, config = build("llama")
    save(model_class, config, tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data["attn_logit_softcapping"] = 30.0
    path.write_text(json.dumps(data))
    with pytest.warns(ConfigWarning, match="attn_logit_softcapping"):
        tndsl.from_pretrained(tmp_path)


def test_every_must_load_value_is_varied():
    varied = {(family, key, json.dumps(overrides[key]))
              for family, keys in VARIED.items() for key, variants in keys.items()
              for overrides in variants if len(overrides) == 1 and key in overrides}
    assert MUST_LOAD <= varied, MUST_LOAD - varied
