"""What a checkpoint's config.json means for a family: the family (from `model_type`),
the dims and consts of its `.tn` file, and every setting the family's table lists,
applied as an edit of the file or refused (docs/families.md, "Every config key honoured
or refused"). Pure functions of the config and the tables; the tensors are
`tndsl.models.loading`'s.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

from tndsl.models.tables import FAMILIES, Edit, Family
from tndsl.models.weights import WeightsError

SUPPORTED = tuple(sorted({t for f in FAMILIES for t in f.model_types}))


class ConfigWarning(UserWarning):
    """A config.json key that no family table lists: read by nothing, said so."""



def family_of(config: Mapping) -> Family:
    model_type = config.get("model_type")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise WeightsError(f"unsupported model_type {_shown(model_type)}; supported: "
                       + ", ".join(SUPPORTED))


def _shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _config_value(config: Mapping, keys: tuple[str, ...]):
    for key in keys:
        value = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is not None:
            return value
    return None


@dataclass(frozen=True)
class Resolved:
    """What a config means for a family: the dims and consts to load the `.tn` file
    with, and the edits its settings make (in the table's order)."""
    dims: dict
    consts: dict
    edits: tuple[tuple[str, object, Edit], ...]   # (key, value, edit)
    ignored: tuple[str, ...]                       # keys no table lists (warned about)


def rope_settings(family: Family, config: Mapping) -> dict:
    """The rotary settings as transformers reads them: `rope_scaling` if given (and not
    empty), else `rope_parameters`; `rope_theta` and `partial_rotary_factor` from there,
    else the legacy top-level keys, else the family's defaults. A `rope_scaling` or
    `rope_parameters` that is not an object is refused, as transformers refuses it."""
    rope = family.rope
    chosen = None
    for key in ("rope_scaling", "rope_parameters"):
        value = config.get(key)
        if chosen is not None or not value:
            continue   # transformers takes the first that is not empty (`a or b`)
        if not isinstance(value, Mapping):
            raise WeightsError(f"config.json: {key} = {_shown(value)} is not an object "
                               "(transformers refuses it too)",
                               hint='e.g. "rope_parameters": {"rope_type": "default", '
                                    '"rope_theta": 10000.0}')
        if chosen is None:
            chosen = (key, dict(value))
    key, params = chosen or ("rope_parameters", {})
    nested = [k for k in params if k in ("full_attention", "sliding_attention")]
    if nested:
        raise WeightsError(f"config.json: {key} gives rotary settings per layer type "
                           f"({', '.join(nested)}); supported: one setting for all layers")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise WeightsError(f"config.json: {key}.rope_type = {_shown(rope_type)} is not "
                           "supported; supported: \"default\" (no rotary scaling)",
                           hint="linear, dynamic, llama3, yarn and longrope scaling change "
                                "the rotary angles, which the family files do not model")
    theta = params.get("rope_theta", _config_value(config, rope.theta_keys))
    out = {"Theta": rope.theta_default if theta is None else theta}
    if rope.fraction_default is not None:
        fraction = params.get("partial_rotary_factor",
                              _config_value(config, rope.fraction_keys))
        out["RotaryFraction"] = rope.fraction_default if fraction is None else fraction
    else:
        fraction = params.get("partial_rotary_factor",
                              _config_value(config, rope.fraction_keys))
        if fraction is not None and fraction != 1:
            raise WeightsError(f"config.json: partial_rotary_factor = {_shown(fraction)} "
                               f"is not supported by the {family.name} family; supported: 1")
    for name, value in out.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise WeightsError(f"config.json: the rotary {'base' if name == 'Theta' else 'fraction'} "
                               f"must be a positive number, not {_shown(value)}")
    return out


def setting_value(setting, config: Mapping):
    if setting.derive is not None:
        return setting.derive(config)
    return config[setting.key] if setting.key in config else setting.default


def resolve(family: Family, config: Mapping) -> Resolved:
    """Every config key the family's table lists, applied or refused: the dims and
    consts, the rotary settings, and each `Setting`'s value (a `WeightsError` naming the
    key, its value and the supported values when the file does not implement it)."""
    for check in family.checks:
        check(config)
    edits = []
    for setting in family.settings:
        value = setting_value(setting, config)
        edit = setting.edit_for(value)
        if edit is None:
            raise WeightsError(
                f"config.json: {setting.key} = {_shown(value)} is not supported by the "
                f"{family.name} family ({setting.effect}); supported: "
                + ", ".join(setting.supported()))
        edits.append((setting.key, value, edit))
    dims, consts, missing = {}, {}, []
    extra_dims = {dim: key for _, _, edit in edits for dim, key in edit.dims.items()}
    sources = {**family.dims, **{dim: (key,) for dim, key in extra_dims.items()}}
    for name, keys in sources.items():
        value = _config_value(config, keys)
        if value is None:
            defaults = [setting_value(s, config) for s in family.settings if s.key in keys]
            value = next((v for v in defaults if v is not None), None)
        if value is None and name == "Head":  # older configs: the head is Model / Heads
            hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
            value = hidden // heads if type(hidden) is int and type(heads) is int \
                and heads > 0 and hidden % heads == 0 else None
        if value is None:
            missing.append(" or ".join(keys))
        elif type(value) is not int or value <= 0:
            raise WeightsError(f"config.json: {keys[0]} must be a positive integer, "
                               f"not {_shown(value)}")
        else:
            dims[name] = value
    if missing:
        raise WeightsError("config.json lacks " + ", ".join(missing))
    for name, keys in family.consts.items():
        value = _config_value(config, keys)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise WeightsError(f"config.json: {keys[0]} must be a number, not "
                                   f"{_shown(value)}")
            consts[name] = value
    if family.rope is not None:
        consts.update(rope_settings(family, config))
    for name, (_, derive) in family.derived.items():
        value = derive(config)
        if value is not None:
            (dims if name in family.dims else consts)[name] = value
    ignored = tuple(sorted(k for k in config if k not in family.known_keys))
    return Resolved(dims, consts, tuple(edits), ignored)


def sizes_from_config(family: Family, config: Mapping) -> tuple[dict, dict]:
    """The dims and consts a config gives the family's file (its settings checked)."""
    resolved = resolve(family, config)
    return resolved.dims, resolved.consts


def edited_source(family: Family, text: str, edits, name: str) -> str:
    """The family's `.tn` text with each setting's edit made; an edit whose text is not
    in the file is a `WeightsError` naming the setting (a user's own file that does not
    have the family file's wording, or a table out of step with its file)."""
    for key, value, edit in edits:
        for old, new in edit.replace:
            if old not in text:
                raise WeightsError(
                    f"config.json: {key} = {_shown(value)} changes the {family.name} "
                    f"model, and {name} does not contain the text that setting edits: "
                    f"{old!r}",
                    hint="write the variant into your file, or use the family's file")
            text = text.replace(old, new)
    return text
