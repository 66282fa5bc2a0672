"""Hugging Face checkpoint folders → a compiled family model with its weights.

Offline and safe: `config.json`, then `model.safetensors`, a sharded
`model.safetensors.index.json`, or `pytorch_model.bin` read with `weights_only=True`.
The family comes from `model_type`; its table (`tndsl.models.tables`) gives the dims,
the consts and every tensor's name and layout, and is checked against the program's
params and the checkpoint's tensors before anything is copied: every difference is
listed in one error.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Mapping

import torch

from tndsl.lang.files import read_json, require_regular
from tndsl.lang.text import terminal
from tndsl.models.tables import FAMILIES, Family
from tndsl.lang.errors import ArgumentError
from tndsl.models.weights import (WeightsError, _compare, _read_tensors, check_weights,
                                  load_hf_gpt2)

SUPPORTED = tuple(sorted({"gpt2", *(t for f in FAMILIES for t in f.model_types)}))


def examples_dir() -> Path:
    """Where the family `.tn` files are: in the checkout, or shipped in the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent.parent / "examples", here / "examples"):
        if (candidate / "llama.tn").is_file():
            return candidate
    raise FileNotFoundError("the family .tn files (examples/llama.tn, ...) are not installed")


def read_config(folder: Path) -> dict:
    """config.json as a dict, read bounded (a regular file, at most JSON_LIMIT bytes,
    nested no deeper than the parser goes: tndsl.lang.files)."""
    config = read_json(folder / "config.json", what="config", error=WeightsError)
    if not isinstance(config, dict):
        raise WeightsError(f"{terminal(folder / 'config.json')} is not a JSON object")
    return config


def read_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder, from one file or from the shards an index
    names (each shard read once)."""
    index = folder / "model.safetensors.index.json"
    if index.exists() and not (folder / "model.safetensors").exists():
        from safetensors.torch import load_file
        data = read_json(index, what="checkpoint index", error=WeightsError)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise WeightsError(f"{terminal(index)}: `weight_map` must be an object mapping "
                               f"tensor names to shard file names, got "
                               f"{_json_kind(weight_map, data)}")
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            path = (folder / shard).resolve()
            if path.parent != folder.resolve():  # a shard name must not leave the folder
                raise WeightsError(f"{terminal(index)} names a shard outside the folder: "
                                   f"{terminal(repr(shard))}")
            require_regular(path, what="shard", error=WeightsError)
            try:
                tensors.update(load_file(str(path)))
            except Exception as e:
                raise WeightsError(f"cannot read shard {terminal(path)}: {e}") from None
        return tensors
    return _read_tensors(folder)


def _json_kind(value, document) -> str:
    """What a JSON value is, for an error: `a list`, `null`, or `no weight_map`."""
    if not isinstance(document, dict) or "weight_map" not in document:
        return "no `weight_map`" if isinstance(document, dict) else \
            f"a {type(document).__name__} instead of an object"
    names = {list: "a list", str: "a string", int: "a number", float: "a number",
             bool: "a boolean", type(None): "null", dict: "an object with a non-string "
                                                          "name or shard"}
    return names.get(type(value), type(value).__name__)


def family_of(config: Mapping) -> Family | None:
    model_type = config.get("model_type")
    if model_type == "gpt2":
        return None
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise WeightsError(f"unsupported model_type {model_type!r}; supported: "
                       + ", ".join(SUPPORTED))


def _config_value(config: Mapping, keys: tuple[str, ...]):
    for key in keys:
        value = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is not None:
            return value
    return None


def sizes_from_config(family: Family, config: Mapping) -> tuple[dict, dict]:
    dims, consts, missing = {}, {}, []
    for name, keys in family.dims.items():
        value = _config_value(config, keys)
        if value is None and name == "Head":  # older configs: the head is Model / Heads
            hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
            value = hidden // heads if isinstance(hidden, int) and isinstance(heads, int) \
                and heads else None
        if value is None:
            missing.append(" or ".join(keys))
        elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise WeightsError(f"config.json: {keys[0]} must be a positive integer, "
                               f"not {value!r}")
        else:
            dims[name] = value
    for name, keys in family.consts.items():
        value = _config_value(config, keys)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise WeightsError(f"config.json: {keys[0]} must be a number, not {value!r}")
            consts[name] = value
    if missing:
        raise WeightsError("config.json lacks " + ", ".join(missing))
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) \
        if isinstance(rope, Mapping) else "default"
    if rope_type not in ("default", None):
        raise WeightsError(f"rotary scaling {rope_type!r} is not supported; supported: "
                           "default (no scaling)")
    return dims, consts


# ---- layouts: an HF tensor → a param of `shape` ------------------------------------------

def _heads_in(t, shape):          # nn.Linear [heads * head, model] → [heads, model, head]
    heads, model, head = shape
    return t.reshape(heads, head, model).permute(0, 2, 1)


def _heads_out(t, shape):         # nn.Linear [model, heads * head] → [heads, head, model]
    heads, head, model = shape
    return t.reshape(model, heads, head).permute(1, 2, 0)


def _neox(j):
    def take(t, shape):           # fused rows h * 3 * head + j * head + e
        if len(shape) == 3:
            heads, model, head = shape
            return t.reshape(heads, 3, head, model)[:, j].permute(0, 2, 1)
        heads, head = shape
        return t.reshape(heads, 3, head)[:, j]
    return take


LAYOUTS = {
    "same": (lambda t, shape: t, lambda s: s),
    "transpose": (lambda t, shape: t.T, lambda s: s[::-1]),
    "heads_in": (_heads_in, lambda s: (s[0] * s[2], s[1])),
    "heads_out": (_heads_out, lambda s: (s[2], s[0] * s[1])),
    "heads_bias": (lambda t, shape: t.reshape(shape), lambda s: (s[0] * s[1],)),
    "neox_q": (_neox(0), lambda s: (3 * s[0] * s[2], s[1]) if len(s) == 3 else (3 * s[0] * s[1],)),
    "neox_k": (_neox(1), None),
    "neox_v": (_neox(2), None),
}
LAYOUTS["neox_k"] = (LAYOUTS["neox_k"][0], LAYOUTS["neox_q"][1])
LAYOUTS["neox_v"] = (LAYOUTS["neox_v"][0], LAYOUTS["neox_q"][1])


def _rows(family: Family, layers: int):
    for tn, hf, layout in family.top:
        # A name starting with "/" is outside the decoder: no prefix.
        yield tn, hf[1:] if hf.startswith("/") else family.prefix + hf, layout
    for l in range(layers):
        for tn, hf, layout in family.layer:
            yield tn.format(l=l), family.prefix + hf.format(l=l), layout


def state_dict(family: Family, program, raw: Mapping[str, torch.Tensor]
               ) -> dict[str, torch.Tensor]:
    """The params of `program` from the checkpoint's tensors, after checking that the
    table, the program and the checkpoint agree (one error listing every difference)."""
    shapes = {p.name: tuple(program.sizes[leg.dim] for leg in p.legs) for p in program.params}
    rows = list(_rows(family, program.sizes["Layers"]))
    covered = {tn for tn, _, _ in rows}
    if covered != set(shapes):  # the table and the .tn file disagree: our mistake
        _compare(shapes, {tn: shapes.get(tn, ()) for tn in covered},
                 f"the {family.name} table's params")
    expected: dict[str, tuple] = {}
    sources: dict[str, str] = {}
    for tn, hf, layout in rows:
        if hf not in raw and tn in family.tied and family.tied[tn] in raw:
            hf = family.tied[tn]  # tied: the unembedding is the embedding
        sources[tn] = hf
        expected.setdefault(hf, tuple(LAYOUTS[layout][1](shapes[tn])))
    actual = {k: tuple(v.shape) for k, v in raw.items()
              if not any(fnmatch.fnmatch(k, pattern) for pattern in family.ignored)}
    _compare(expected, actual, "the checkpoint's tensors")
    state = {}
    for tn, hf, layout in rows:
        state[tn] = LAYOUTS[layout][0](raw[sources[tn]], shapes[tn]).contiguous()
    return state


def load_hf(folder: str | Path, *, context: int | None = None,
            allow_nonfinite: bool = False):
    """`(program, state_dict)` for a Hugging Face checkpoint folder: the family's `.tn`
    compiled with the config's dims and consts, and its params from the checkpoint,
    which must be floating point and finite unless `allow_nonfinite`
    (`tndsl.models.weights.check_weights`)."""
    from tndsl.program import load
    if context is not None and (isinstance(context, bool) or not isinstance(context, int)
                                or context < 1):
        raise ArgumentError(f"context must be a positive whole number of positions (or "
                            f"None: the checkpoint's), got {terminal(repr(context))}")
    folder = Path(folder)
    config = read_config(folder)
    family = family_of(config)
    if family is None:
        return _load_gpt2(folder, config, context, allow_nonfinite)
    dims, consts = sizes_from_config(family, config)
    if context is not None:
        dims["Context"] = context
    program = load(examples_dir() / family.example, dims=dims, consts=consts)
    state = state_dict(family, program, read_checkpoint(folder))
    check_weights(state, folder, allow_nonfinite=allow_nonfinite)
    return program, state


def _load_gpt2(folder: Path, config: Mapping, context: int | None,
               allow_nonfinite: bool = False):
    """GPT-2 learns its positions: Context is fixed, `n_positions` or the `context`
    given (the first rows of the position embedding), at most `n_positions`."""
    from tndsl.program import load
    state = load_hf_gpt2(folder, allow_nonfinite=allow_nonfinite)
    try:
        dims = {"Vocab": config["vocab_size"], "Model": config["n_embd"],
                "Heads": config["n_head"], "Layers": config["n_layer"],
                "Context": config["n_positions"] if context is None else context}
    except KeyError as e:
        raise WeightsError(f"config.json lacks {e.args[0]}") from None
    if dims["Context"] > config["n_positions"]:
        raise ArgumentError(f"context = {context} is more than the {config['n_positions']} "
                            "positions GPT-2 learnt (`n_positions`)",
                            hint=f"give a context of at most {config['n_positions']}")
    state["pos_embed.W_pos"] = state["pos_embed.W_pos"][:dims["Context"]].contiguous()
    program = load(examples_dir() / "gpt2_small.tn", dims=dims,
                   consts={})
    return program, state


def from_pretrained(folder: str | Path, dtype: torch.dtype | None = None, *,
                    context: int | None = None, allow_nonfinite: bool = False):
    """The compiled module of a Hugging Face checkpoint folder with its weights loaded,
    in `dtype` (default: the checkpoint's). Families: gpt2, gpt_neox (Pythia), llama,
    mistral, qwen2, gemma. `context` fixes the sequence length (needed only by GPT-2,
    whose positions are learnt; the rotary families take any length), a positive
    integer. Weights must be floating point and finite: `allow_nonfinite=True` loads
    NaN and infinite values all the same."""
    from tndsl.models.weights import load_state
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ArgumentError(f"dtype must be a floating torch.dtype (torch.float32, ...), "
                            f"got {terminal(repr(dtype))}")
    program, state = load_hf(folder, context=context, allow_nonfinite=allow_nonfinite)
    module = program.module()
    if dtype is None:
        dtype = next((t.dtype for t in state.values() if t.is_floating_point()), None)
    if dtype is not None:
        module = module.to(dtype)
    load_state(module, state)
    module.tndsl_program = program
    return module
