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
import json
from pathlib import Path
from typing import Mapping

import torch

from tndsl.models.tables import FAMILIES, Family
from tndsl.models.tokenizer import Tokenizer
from tndsl.models.weights import WeightsError, _compare, _read_tensors, load_hf_gpt2

SUPPORTED = tuple(sorted({"gpt2", *(t for f in FAMILIES for t in f.model_types)}))


def examples_dir() -> Path:
    """Where the family `.tn` files are: in the checkout, or shipped in the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent.parent / "examples", here / "examples"):
        if (candidate / "llama.tn").is_file():
            return candidate
    raise FileNotFoundError("the family .tn files (examples/llama.tn, ...) are not installed")


def read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"cannot read {folder / 'config.json'}: {e}") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{folder / 'config.json'} is not a JSON object")
    return config


def read_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder, from one file or from the shards an index
    names (each shard read once)."""
    index = folder / "model.safetensors.index.json"
    if index.exists() and not (folder / "model.safetensors").exists():
        from safetensors.torch import load_file
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise WeightsError(f"cannot read {index}: {e}") from None
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            path = (folder / shard).resolve()
            if path.parent != folder.resolve():  # a shard name must not leave the folder
                raise WeightsError(f"{index} names a shard outside the folder: {shard!r}")
            try:
                tensors.update(load_file(str(path)))
            except Exception as e:
                raise WeightsError(f"cannot read shard {path}: {e}") from None
        return tensors
    return _read_tensors(folder)


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


def load_hf(folder: str | Path, *, context: int | None = None):
    """`(program, state_dict)` for a Hugging Face checkpoint folder: the family's `.tn`
    compiled with the config's dims and consts, and its params from the checkpoint."""
    from tndsl.program import load
    folder = Path(folder)
    config = read_config(folder)
    family = family_of(config)
    if family is None:
        return _load_gpt2(folder, config, context)
    dims, consts = sizes_from_config(family, config)
    if context is not None:
        dims["Context"] = context
    program = load(examples_dir() / family.example, dims=dims, consts=consts)
    return program, state_dict(family, program, read_checkpoint(folder))


def _load_gpt2(folder: Path, config: Mapping, context: int | None):
    """GPT-2 learns its positions: Context is fixed, `n_positions` or the `context`
    given (the first rows of the position embedding)."""
    from tndsl.program import load
    state = load_hf_gpt2(folder)
    try:
        dims = {"Vocab": config["vocab_size"], "Model": config["n_embd"],
                "Heads": config["n_head"], "Layers": config["n_layer"],
                "Context": context or config["n_positions"]}
    except KeyError as e:
        raise WeightsError(f"config.json lacks {e.args[0]}") from None
    state["pos_embed.W_pos"] = state["pos_embed.W_pos"][:dims["Context"]].contiguous()
    program = load(examples_dir() / "gpt2_small.tn", dims=dims,
                   consts={})
    return program, state


def from_pretrained(folder: str | Path, dtype: torch.dtype | None = None, *,
                    context: int | None = None):
    """The compiled module of a Hugging Face checkpoint folder with its weights loaded,
    in `dtype` (default: the checkpoint's). Families: gpt2, gpt_neox (Pythia), llama,
    mistral, qwen2, gemma. `context` fixes the sequence length (needed only by GPT-2,
    whose positions are learnt; the rotary families take any length)."""
    from tndsl.models.weights import load_state
    program, state = load_hf(folder, context=context)
    module = program.module()
    if dtype is None:
        dtype = next((t.dtype for t in state.values() if t.is_floating_point()), None)
    if dtype is not None:
        module = module.to(dtype)
    load_state(module, state)
    module.tndsl_program = program
    # Text: the folder's tokenizer.json (None without one: the text methods then say
    # so), and the special token ids generation stops and pads with.
    folder = Path(folder)
    config = {**read_config(folder), **_generation_config(folder)}
    module.tokenizer = Tokenizer.from_folder(folder, config)
    module.special_tokens = {kind: config.get(f"{kind}_token_id")
                             for kind in ("bos", "eos", "pad")}
    return module


def _generation_config(folder: Path) -> dict:
    """`generation_config.json`'s special token ids, which Hugging Face's `generate`
    prefers to config.json's; {} when absent or unreadable."""
    try:
        value = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items()
            if k in ("bos_token_id", "eos_token_id", "pad_token_id") and v is not None}
