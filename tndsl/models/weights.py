"""Weights in and out: Hugging Face GPT-2 checkpoints, and safetensors files.

Nothing here unpickles arbitrary objects: safetensors files hold only tensors, and a
`pytorch_model.bin` is read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from tndsl.lang.errors import TnError
from tndsl.lang.files import read_json, require_regular
from tndsl.lang.text import terminal


class WeightsError(TnError):
    """Weights that do not match the model: names, shapes, or an unreadable file."""


def load_hf_gpt2(folder: str | Path, *, allow_nonfinite: bool = False
                 ) -> dict[str, torch.Tensor]:
    """Read a Hugging Face GPT-2 checkpoint folder (config.json and model.safetensors
    or pytorch_model.bin), offline, into a state dict keyed by the parameter paths of
    `examples/gpt2_small.tn` (TransformerLens's names and layouts). The weights must
    be floating point and finite (`check_weights`)."""
    folder = Path(folder)
    config = read_json(folder / "config.json", what="config", error=WeightsError)
    sizes = _gpt2_sizes(config, folder / "config.json")
    raw = _read_tensors(folder)
    raw = {k.removeprefix("transformer."): v for k, v in raw.items()}
    _match_checkpoint(sizes, raw, folder / "config.json")
    layers, heads = sizes["n_layer"], sizes["n_head"]
    model, vocab = sizes["n_embd"], sizes["vocab_size"]
    head = model // heads

    expected = {"wte.weight": (vocab, model), "wpe.weight": (sizes["n_positions"], model),
                "ln_f.weight": (model,), "ln_f.bias": (model,)}
    for l in range(layers):
        h = f"h.{l}."
        expected |= {
            h + "ln_1.weight": (model,), h + "ln_1.bias": (model,),
            h + "ln_2.weight": (model,), h + "ln_2.bias": (model,),
            h + "attn.c_attn.weight": (model, 3 * model), h + "attn.c_attn.bias": (3 * model,),
            h + "attn.c_proj.weight": (model, model), h + "attn.c_proj.bias": (model,),
            h + "mlp.c_fc.weight": (model, 4 * model), h + "mlp.c_fc.bias": (4 * model,),
            h + "mlp.c_proj.weight": (4 * model, model), h + "mlp.c_proj.bias": (model,),
        }
    # Buffers (the causal mask) and the tied lm_head are not parameters of their own.
    ignored = {k for k in raw if k.endswith((".attn.bias", ".attn.masked_bias"))
               and k not in expected} | {"lm_head.weight"}
    _compare(expected, {k: tuple(v.shape) for k, v in raw.items() if k not in ignored},
             "the checkpoint")

    state = {"embed.W_E": raw["wte.weight"], "pos_embed.W_pos": raw["wpe.weight"],
             "unembed.W_U": raw.get("lm_head.weight", raw["wte.weight"]).T,
             "unembed.b_U": torch.zeros(vocab, dtype=raw["wte.weight"].dtype),
             "ln_final.w": raw["ln_f.weight"], "ln_final.b": raw["ln_f.bias"]}
    for l in range(layers):
        h, b = f"h.{l}.", f"blocks.{l}."
        # Conv1D stores x @ W layouts; the fused c_attn columns are [q | k | v], each
        # split into heads as column = head * head_size + e.
        qkv_w = raw[h + "attn.c_attn.weight"].split(model, dim=1)
        qkv_b = raw[h + "attn.c_attn.bias"].split(model)
        for name, w, bias in zip("QKV", qkv_w, qkv_b):
            state[b + f"attn.W_{name}"] = w.reshape(model, heads, head).permute(1, 0, 2)
            state[b + f"attn.b_{name}"] = bias.reshape(heads, head)
        state[b + "attn.W_O"] = raw[h + "attn.c_proj.weight"].reshape(heads, head, model)
        state[b + "attn.b_O"] = raw[h + "attn.c_proj.bias"]
        state[b + "ln1.w"], state[b + "ln1.b"] = raw[h + "ln_1.weight"], raw[h + "ln_1.bias"]
        state[b + "ln2.w"], state[b + "ln2.b"] = raw[h + "ln_2.weight"], raw[h + "ln_2.bias"]
        state[b + "mlp.W_in"], state[b + "mlp.b_in"] = raw[h + "mlp.c_fc.weight"], raw[h + "mlp.c_fc.bias"]
        state[b + "mlp.W_out"] = raw[h + "mlp.c_proj.weight"]
        state[b + "mlp.b_out"] = raw[h + "mlp.c_proj.bias"]
    state = {k: v.contiguous() for k, v in state.items()}
    check_weights(state, folder, allow_nonfinite=allow_nonfinite)
    return state


def check_weights(state: Mapping[str, torch.Tensor], source, *,
                  allow_nonfinite: bool = False) -> None:
    """Weights must be floating point (an integer, boolean or complex tensor would be
    cast silently, or fail deep in the forward) and finite: a NaN or an infinity is
    refused unless `allow_nonfinite=True`. `source` (a file or folder) is named in the
    error with the param."""
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise WeightsError(
                f"{terminal(source)}: the weights of `{terminal(name)}` are {tensor.dtype}; "
                "weights must be floating point (float32, float16, bfloat16 or float64)",
                hint="convert the checkpoint to a floating dtype")
        if allow_nonfinite:
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            nan = int(torch.isnan(tensor).sum())
            inf = int((~finite).sum()) - nan
            first = tuple(int(i) for i in (~finite).nonzero()[0])
            raise WeightsError(
                f"{terminal(source)}: the weights of `{terminal(name)}` hold {nan} NaN and "
                f"{inf} infinite values (the first at index {first})",
                hint="pass allow_nonfinite=True to load them all the same")


GPT2_SIZES = ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions")


def _gpt2_sizes(config, path: Path) -> dict[str, int]:
    """The sizes GPT-2's config.json gives, each a positive integer, checked before
    anything is built from them (a wrong one would otherwise surface as a
    ZeroDivisionError, a failed reshape, or a loop over 10¹² layers)."""
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: expected a JSON object of settings, got "
                           f"{type(config).__name__} {_shown(config)}")
    sizes = {}
    for field in GPT2_SIZES:
        if field not in config:
            raise WeightsError(f"{path}: `{field}` is missing",
                               hint="GPT-2 configs give " + ", ".join(GPT2_SIZES))
        value = config[field]
        if type(value) is not int or value < 1:  # bool is an int subclass: refused too
            raise WeightsError(f"{path}: `{field}` = {_shown(value)} is not a positive "
                               "integer")
        sizes[field] = value
    if sizes["n_embd"] % sizes["n_head"]:
        raise WeightsError(f"{path}: `n_embd` = {sizes['n_embd']} is not divisible by "
                           f"`n_head` = {sizes['n_head']}",
                           hint="each head has n_embd / n_head dimensions")
    return sizes


def _match_checkpoint(sizes: dict[str, int], raw: Mapping[str, torch.Tensor],
                      path: Path) -> None:
    """Compare config.json's sizes with the checkpoint's own, naming the field that
    disagrees (before any per-layer work, so a huge `n_layer` is refused at once)."""
    found: set[int] = set()
    for key in raw:
        parts = key.split(".")
        if len(parts) > 2 and parts[0] == "h" and parts[1].isdigit():
            found.add(int(parts[1]))
    if sizes["n_layer"] != len(found):
        raise WeightsError(f"{path}: `n_layer` = {sizes['n_layer']}, but the checkpoint "
                           f"holds {len(found)} layers")
    for key, fields in (("wte.weight", ("vocab_size", "n_embd")),
                        ("wpe.weight", ("n_positions", "n_embd"))):
        if key not in raw:
            continue  # reported with every other missing tensor by _compare
        shape = tuple(raw[key].shape)
        for axis, field in enumerate(fields):
            if len(shape) == 2 and shape[axis] != sizes[field]:
                raise WeightsError(f"{path}: `{field}` = {sizes[field]}, but the "
                                   f"checkpoint's {key} has shape {shape}")


def _shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_file
        require_regular(folder / "model.safetensors", what="weights", error=WeightsError)
        try:
            raw = load_file(str(folder / "model.safetensors"))
        except Exception as e:  # a damaged header, a truncated file, a foreign format
            raise WeightsError(f"cannot read {terminal(folder / 'model.safetensors')}: "
                               f"{e}") from None
    elif (folder / "pytorch_model.bin").exists():
        require_regular(folder / "pytorch_model.bin", what="weights", error=WeightsError)
        try:
            raw = torch.load(folder / "pytorch_model.bin", map_location="cpu",
                             weights_only=True)
        except Exception as e:  # an unpickling refusal is an error in the file, not ours
            raise WeightsError(f"cannot load {folder / 'pytorch_model.bin'} safely: {e}") \
                from None
        if not isinstance(raw, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
            raise WeightsError(f"{folder / 'pytorch_model.bin'} is not a state dict (a "
                               f"mapping of names to tensors); it holds a "
                               f"{type(raw).__name__}")
    else:
        raise WeightsError(f"{folder} has neither model.safetensors nor pytorch_model.bin")
    return raw


def load_state(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` into the module's params; every name and shape must match."""
    own = dict(module.named_parameters())
    _compare({k: tuple(v.shape) for k, v in own.items()},
             {k: tuple(v.shape) for k, v in state.items()}, "the weights")
    with torch.no_grad():
        for name, param in own.items():
            param.copy_(state[name])


def contiguous_params(module: nn.Module) -> nn.Module:
    """Store every param contiguously in its declared leg order, in place (the same
    Parameter objects, so an optimizer keeps them), undoing the storage orders the
    layout pass chose (tndsl.passes.layout), for tools that need contiguous params:
    FSDP2's `fully_shard`, `torch.nn.utils.parameters_to_vector`, `param.view(-1)`.
    The forward stays correct; it copies those weights on each call again."""
    with torch.no_grad():
        for param in module.parameters():
            if not param.is_contiguous():
                param.data = param.data.contiguous()
    return module


def save_safetensors(module: nn.Module, path: str | Path) -> None:
    from safetensors.torch import save_file
    save_file({k: v.detach().contiguous() for k, v in module.named_parameters()}, str(path))


def load_safetensors(module: nn.Module, path: str | Path, *,
                     allow_nonfinite: bool = False) -> None:
    """Load a safetensors file into the module's params: every name and shape must
    match, and the weights be floating point and finite (`check_weights`)."""
    from safetensors.torch import load_file
    require_regular(path, what="weights", error=WeightsError)
    try:
        state = load_file(str(path))
    except Exception as e:
        raise WeightsError(f"cannot read {terminal(path)}: {e}") from None
    check_weights(state, path, allow_nonfinite=allow_nonfinite)
    load_state(module, state)


def _compare(expected: Mapping[str, tuple], actual: Mapping[str, tuple], what: str) -> None:
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    shapes = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
    if not (missing or unexpected or shapes):
        return
    lines = []
    if missing:
        lines.append("missing: " + _listing(missing))
    if unexpected:
        lines.append("unexpected: " + _listing(unexpected))
    for k in shapes[:10]:
        lines.append(f"shape of {k}: expected {expected[k]}, got {actual[k]}")
    if len(shapes) > 10:
        lines.append(f"... and {len(shapes) - 10} more shape mismatches")
    raise WeightsError(f"{what} do not match the model:\n  " + "\n  ".join(lines))


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:8])
    return shown + (f" ... ({len(names)} in all)" if len(names) > 8 else "")
