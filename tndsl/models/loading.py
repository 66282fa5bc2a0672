"""Hugging Face checkpoint folders → a compiled family model with its weights.

Offline and safe: `config.json`, then `model.safetensors`, a sharded
`model.safetensors.index.json`, or `pytorch_model.bin` read with `weights_only=True`.
The family comes from `model_type`; its table (`tndsl.models.tables`) gives the dims,
the consts and every tensor's name and layout; what the config's settings do to the
family's file is `tndsl.models.settings`. The table is checked against the program's
params and the checkpoint's tensors before anything is copied: every difference is
listed in one error.
"""
from __future__ import annotations

import fnmatch
import json
import warnings
from pathlib import Path
from typing import Mapping

import torch

from tndsl.lang.errors import ArgumentError, TnErrors
from tndsl.lang.files import read_json, read_limited, require_regular
from tndsl.lang.syntax.parser import MAX_SOURCE_CHARS
from tndsl.lang.text import terminal
from tndsl.models.settings import (SUPPORTED, ConfigWarning, edited_source,  # noqa: F401
                                   family_of, resolve)
from tndsl.models.tables import Family
from tndsl.models.tokenizer import Tokenizer
from tndsl.models.weights import (WeightsError, _compare, _read_tensors, check_weights,
                                  load_hf_gpt2)


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


def _rows_with_edits(family: Family, edits) -> tuple[tuple, tuple, dict, tuple]:
    top, layer, tied = list(family.top), list(family.layer), dict(family.tied)
    ignored = list(family.ignored)
    for _, _, edit in edits:
        top = [r for r in top if r[0] not in edit.drop] + list(edit.top)
        layer = [r for r in layer if r[0] not in edit.drop] + list(edit.layer)
        tied.update(edit.tie)
        ignored += edit.ignore
    return tuple(top), tuple(layer), tied, tuple(ignored)


# ---- layouts: an HF tensor → a param of `shape` ------------------------------------------

def _heads_in(t, shape, sizes=None):   # nn.Linear [heads * head, model] → [heads, model, head]
    heads, model, head = shape
    return t.reshape(heads, head, model).permute(0, 2, 1)


def _heads_out(t, shape, sizes=None):  # nn.Linear [model, heads * head] → [heads, head, model]
    heads, head, model = shape
    return t.reshape(model, heads, head).permute(1, 2, 0)


def _neox(j):
    def take(t, shape, sizes):    # fused rows h * 3 * head + j * head + e
        if len(shape) == 3:
            heads, model, head = shape
            return t.reshape(heads, 3, head, model)[:, j].permute(0, 2, 1)
        heads, head = shape
        return t.reshape(heads, 3, head)[:, j]
    return take


def _neox_shape(s, sizes):
    return (3 * s[0] * s[2], s[1]) if len(s) == 3 else (3 * s[0] * s[1],)


def _stacked_bounds(sizes, j):
    """Rows of part j of a projection stacked as [queries | keys | values]: all query
    heads, then the key/value heads (Phi-3's qkv_proj, GPT-BigCode's multi-query)."""
    heads, groups, head = sizes["Heads"], sizes.get("KVHeads", sizes["Heads"]), sizes["Head"]
    edges = (0, heads * head, (heads + groups) * head, (heads + 2 * groups) * head)
    return edges[j], edges[j + 1]


def _stacked(j):
    def take(t, shape, sizes):
        start, stop = _stacked_bounds(sizes, j)
        part = t[start:stop]
        return _heads_in(part, shape) if len(shape) == 3 else part.reshape(shape)
    return take


def _stacked_shape(s, sizes):
    rows = _stacked_bounds(sizes, 2)[1]
    return (rows, s[1]) if len(s) == 3 else (rows,)


def _half(j):                     # nn.Linear [2 * hidden, model], [gate | up] → [model, hidden]
    def take(t, shape, sizes):
        model, hidden = shape
        return t.reshape(2, hidden, model)[j].T
    return take


# name → (take(tensor, param shape, sizes) → the param, expected HF shape(param shape,
# sizes); None in it: any size, checked by the take).
LAYOUTS = {
    "same": (lambda t, shape, sizes: t, lambda s, sizes: s),
    "transpose": (lambda t, shape, sizes: t.T, lambda s, sizes: s[::-1]),
    "heads_in": (_heads_in, lambda s, sizes: (s[0] * s[2], s[1])),
    "heads_out": (_heads_out, lambda s, sizes: (s[2], s[0] * s[1])),
    "heads_bias": (lambda t, shape, sizes: t.reshape(shape), lambda s, sizes: (s[0] * s[1],)),
    "neox_q": (_neox(0), _neox_shape),
    "neox_k": (_neox(1), _neox_shape),
    "neox_v": (_neox(2), _neox_shape),
    "stacked_q": (_stacked(0), _stacked_shape),
    "stacked_k": (_stacked(1), _stacked_shape),
    "stacked_v": (_stacked(2), _stacked_shape),
    "gate_half": (_half(0), lambda s, sizes: (2 * s[1], s[0])),
    "up_half": (_half(1), lambda s, sizes: (2 * s[1], s[0])),
    # nn.Linear(model, 1) → [model] (a gate with one output: Qwen2-MoE's shared expert's)
    "flatten": (lambda t, shape, sizes: t.reshape(shape), lambda s, sizes: (1, *s)),
    # The first row of a table (BERT's token type 0, what a missing token_type_ids means).
    "first_row": (lambda t, shape, sizes: t[0], lambda s, sizes: (None, *s)),
}


def _rows(family: Family, layers: int, top=None, layer=None):
    for tn, hf, layout in family.top if top is None else top:
        # A name starting with "/" is outside the decoder: no prefix.
        yield tn, hf[1:] if hf.startswith("/") else family.prefix + hf, layout
    for l in range(layers):
        for tn, hf, layout in family.layer if layer is None else layer:
            # `{x}` (an expert) stays for state_dict to expand.
            yield tn.format(l=l), family.prefix + hf.format(l=l, x="{x}"), layout


def state_dict(family: Family, program, raw: Mapping[str, torch.Tensor],
               edits=(), *, own_file: bool = False) -> dict[str, torch.Tensor]:
    """The params of `program` from the checkpoint's tensors, after checking that the
    table, the program and the checkpoint agree (one error listing every difference).
    `edits` are the settings' (`resolve`): rows added, dropped or tied."""
    top, layer, tied, ignored = _rows_with_edits(family, edits)
    params = {p.name: p for p in program.params}
    shapes = {name: tuple(program.sizes[leg.dim] for leg in p.legs)
              for name, p in params.items()}
    rows = list(_rows(family, program.sizes["Layers"], top, layer))
    _check_params(family, program, params, shapes, rows)
    expected: dict[str, tuple] = {}
    sources: dict[str, str] = {}
    experts: dict[str, list[str]] = {}
    for tn, hf, layout in rows:
        if "{x}" in hf:  # one tensor per expert, stacked along the param's first leg
            experts[tn] = [hf.format(x=e) for e in range(shapes[tn][0])]
            sources[tn] = experts[tn][0]
            for name in experts[tn]:
                expected.setdefault(name, tuple(LAYOUTS[layout][1](shapes[tn][1:],
                                                                    program.sizes)))
            continue
        if tn in tied and (tied[tn] in raw or hf not in raw):
            hf = tied[tn]  # tied: the unembedding is the embedding
        sources[tn] = hf
        shape = tuple(LAYOUTS[layout][1](shapes[tn], program.sizes))
        if hf in raw and len(shape) == raw[hf].dim():  # None: any size there
            shape = tuple(n if e is None else e for e, n in zip(shape, raw[hf].shape))
        expected.setdefault(hf, shape)
    if own_file:
        _check_shapes(family, params, shapes, rows, sources, expected, raw)
    ignored += tuple(hf for tn, hf, _ in rows if tn in tied and sources[tn] != hf)
    # A name the rows read is never ignored (BERT's untied decoder).
    actual = {k: tuple(v.shape) for k, v in raw.items() if k in expected
              or not any(fnmatch.fnmatch(k, pattern) for pattern in ignored)}
    _compare(expected, actual, "the checkpoint's tensors")
    state = {}
    for tn, hf, layout in rows:
        if tn in experts:
            state[tn] = torch.stack([LAYOUTS[layout][0](raw[name], shapes[tn][1:],
                                                        program.sizes)
                                     for name in experts[tn]]).contiguous()
            continue
        state[tn] = LAYOUTS[layout][0](raw[sources[tn]], shapes[tn],
                                       program.sizes).contiguous()
    return state


def _check_params(family: Family, program, params, shapes, rows) -> None:
    """The program's params against the table's rows: a param no row fills, or a row
    whose param the file does not declare, is an error at the file's declaration (a
    user's own file) or naming the path, all listed at once."""
    covered = {tn for tn, _, _ in rows}
    if covered == set(params):
        return
    errors = []
    name = program.network.source.name
    for tn in sorted(set(params) - covered):
        errors.append(WeightsError(
            f"param `{tn}` {list(shapes[tn])} is not filled by any tensor of a "
            f"{family.name} checkpoint", params[tn].span,
            hint=f"the {family.name} table fills: " + _listing(sorted(covered))))
    for tn in sorted(covered - set(params))[:20]:
        hf = next(h for t, h, _ in rows if t == tn)
        errors.append(WeightsError(
            f"{name}: declares no param `{tn}`, which the {family.name} table fills from "
            f"the checkpoint's {hf}",
            hint="declare it with this path (a block instance's params are named under "
                 "its `as` path), or use the family's file"))
    _raise(errors)


def _check_shapes(family, params, shapes, rows, sources, expected, raw) -> None:
    """A user's own file: each param whose shape does not fit its checkpoint tensor is
    an error at the param's declaration."""
    errors = []
    for tn, _, layout in rows:
        hf = sources[tn]
        if hf in raw and tuple(raw[hf].shape) != expected[hf]:
            legs = ", ".join(f"{leg.name}: {leg.dim}" for leg in params[tn].legs)
            errors.append(WeightsError(
                f"param `{tn}` [{legs}] = {list(shapes[tn])} does not fit the checkpoint's "
                f"{hf} of shape {list(raw[hf].shape)}", params[tn].span,
                hint=f"the {family.name} table reads it with layout `{layout}`, which "
                     f"needs the checkpoint's shape {list(expected[hf])}: check the legs' "
                     "order and dims against the family's file"))
    _raise(errors)


class WeightsErrors(TnErrors, WeightsError):
    """Several weights errors, reported together."""


def _raise(errors: list) -> None:
    """Raise the errors, one per place in the file (a block's param is one declaration
    for every layer: its first instance stands for the rest)."""
    seen, shown = set(), []
    for error in errors:
        key = (error.span.source.name, error.span.start) if error.span else id(error)
        if key not in seen:
            seen.add(key)
            shown.append(error)
    if len(shown) == 1:
        raise shown[0]
    if shown:
        raise WeightsErrors(shown)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:6])
    return shown + (f" ... ({len(names)} in all)" if len(names) > 6 else "")


def _context(value, family: Family) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 1:  # bool, float, 0: refused, never "the maximum"
        raise ArgumentError(f"context must be a positive whole number of positions (or "
                            f"None: the checkpoint's), got {terminal(repr(value))}")
    return value


def load_hf(folder: str | Path, *, context: int | None = None,
            tn: str | Path | None = None, allow_nonfinite: bool = False):
    """`(program, state_dict)` for a Hugging Face checkpoint folder: the family's `.tn`
    (or the user's own file `tn`, read through the family's table) loaded with the
    config's dims and consts and the edits its settings make, and its params from the
    checkpoint. A config key the table does not list is warned about; one it lists with
    a value the file does not implement is a `WeightsError`. The params must be floating
    point and finite unless `allow_nonfinite` (`tndsl.models.weights.check_weights`)."""
    from tndsl.program import parse
    folder = Path(folder)
    config = read_config(folder)
    family = family_of(config)
    resolved = resolve(family, config)
    if resolved.ignored:
        warnings.warn(f"{folder / 'config.json'}: keys the {family.name} table does not "
                      f"list, ignored: {', '.join(resolved.ignored)}", ConfigWarning,
                      stacklevel=3)
    context = _context(context, family)
    dims, consts = dict(resolved.dims), dict(resolved.consts)
    if family.learnt_context is not None:
        positions = dims[family.learnt_context]
        if context is not None and context > positions:
            raise WeightsError(f"context = {context} is longer than the {positions} "
                               f"positions the checkpoint learnt")
        dims[family.learnt_context] = context or positions
    elif context is not None:
        dims["Context"] = context
    path = Path(tn) if tn is not None else examples_dir() / family.example
    data = read_limited(path, 4 * MAX_SOURCE_CHARS, what=".tn source", error=WeightsError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WeightsError(f"cannot read {terminal(path)}: {e}") from None
    text = edited_source(family, text, resolved.edits, str(path))
    # A user's file need not declare every dim the config sizes (KVHeads, Window...).
    program = parse(text, str(path), dims, consts,
                    extra_dims="error" if tn is None else "ignore")
    if family.name == "gpt2":  # Conv1D layouts, read by tndsl.models.weights
        state = load_hf_gpt2(folder, allow_nonfinite=allow_nonfinite)
        state["pos_embed.W_pos"] = state["pos_embed.W_pos"][:dims["Context"]].contiguous()
        _check_params(family, program, {p.name: p for p in program.params},
                      {}, [(name, name, "same") for name in state])
        return program, state
    state = state_dict(family, program, read_checkpoint(folder), resolved.edits,
                       own_file=tn is not None)
    check_weights(state, folder, allow_nonfinite=allow_nonfinite)
    return program, state


def from_pretrained(folder: str | Path, dtype: torch.dtype | None = None, *,
                    context: int | None = None, tn: str | Path | None = None,
                    allow_nonfinite: bool = False):
    """The compiled module of a Hugging Face checkpoint folder with its weights loaded,
    in `dtype` (default: the checkpoint's). The family comes from config.json's
    `model_type` (`tndsl families` lists them). `context` fixes the sequence length
    (needed only by families with learnt positions, GPT-2 and BERT; the rotary families
    take any length). `tn` loads the checkpoint into your own `.tn` file instead of the
    family's: the family's table maps the checkpoint's tensors to its param paths, and a
    param missing or misshapen is a located error. `context` is a positive integer and
    `dtype` a floating torch.dtype. Weights must be floating point and finite:
    `allow_nonfinite=True` loads NaN and infinite values all the same."""
    from tndsl.models.weights import load_state
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ArgumentError(f"dtype must be a floating torch.dtype (torch.float32, ...), "
                            f"got {terminal(repr(dtype))}")
    program, state = load_hf(folder, context=context, tn=tn, allow_nonfinite=allow_nonfinite)
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
