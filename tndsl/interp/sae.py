"""Sparse autoencoders (SAEs) as diagrams: loaded offline, spliced into a model at a hook
point, their features hook points you can read and steer.

    sae = tndsl.sae.load("path/to/sae")                # cfg.json + sae_weights.safetensors
    with tndsl.sae.steer(model, sae, feature=1234, value=10 * max_act):
        model.generate("The bridge", 20)
    with tndsl.sae.attach(model, None, sae, keep_error=True):
        logits, cache = tndsl.hooks.run_with_cache(model, tokens,
                                                  names=[sae.features_name])

An SAE is a `.tn` block (`BLOCKS`, the same text as examples/sae.tn): `W_enc`, `b_enc`,
an activation box — ReLU, JumpReLU (`relu(pre) * step(pre - threshold)`), or TopK
(`relu(topk[f](pre, K))`) — then `W_dec`, `b_dec`; like SAELens, `b_dec` is subtracted
from the input first where the config says `apply_b_dec_to_input`. `SAE.program` is that
file checked, so it is drawn (`.render()`), verified and compiled like any other; the
module is compiled from it.

`attach` registers the compiled SAE under the model's hook point and replaces the
activation by the reconstruction; with `keep_error=True` the reconstruction error of the
unsteered SAE is added back, so the model's output is unchanged until a feature is
changed (SAELens's `use_error_term`). Its hook points join the model's as
`<hook name>.sae.pre`, `<hook name>.sae.features`, `<hook name>.sae.out`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tndsl.interp.hooks import hook_points
from tndsl.lang.errors import TnError, UnknownNameError, did_you_mean
from tndsl.models.weights import load_state
from tndsl.program import parse

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
ARCHITECTURES = ("standard", "jumprelu", "topk")


class SAEError(TnError):
    """An SAE folder that cannot be read, or an SAE that does not fit where it goes."""


_ENCODE = {
    True: "    pre[p, f] = (x[p, m] - b_dec[m] * ones[p]) * W_enc[m, f] + b_enc[f] * ones[p]",
    False: "    pre[p, f] = x[p, m] * W_enc[m, f] + b_enc[f] * ones[p]",
}
_PARAMS = """    param W_enc[m: Model, f: Features]
    param b_enc[f: Features] init zeros
    param W_dec[f: Features, m: Model]
    param b_dec[m: Model] init zeros"""
_DECODE = "    return features[p, f] * W_dec[f, m] + b_dec[m] * ones[p]"
_ACTIVATION = {
    "standard": ("ReLUSAE", "", "    features[p, f] = relu(pre[p, f])"),
    "jumprelu": ("JumpReLUSAE", "\n    param threshold[f: Features] init zeros",
                 "    features[p, f] = relu(pre[p, f]) * step(pre[p, f] - threshold[f] * ones[p])"),
    "topk": ("TopKSAE", "", "    features[p, f] = relu(topk[f](pre[p, f], K))"),
}


def block(architecture: str, subtract_b_dec: bool = True) -> str:
    """The `.tn` block of an SAE with this activation."""
    name, extra, activation = _ACTIVATION[architecture]
    return "\n".join([f"block {name}(x[p: Context, m: Model]) -> [p: Context, m: Model] {{",
                      _PARAMS + extra, _ENCODE[subtract_b_dec], activation, _DECODE, "}"])


BLOCKS = {a: block(a) for a in ARCHITECTURES}


@dataclass(frozen=True)
class SAEConfig:
    architecture: str          # "standard" (ReLU) | "jumprelu" | "topk"
    d_in: int
    d_sae: int
    hook_name: str | None = None
    k: int | None = None       # TopK
    apply_b_dec_to_input: bool = True

    def source(self) -> str:
        """The SAE as a `.tn` file: its block, instantiated as `sae` on input `x`."""
        name = _ACTIVATION[self.architecture][0]
        lines = ["# A sparse autoencoder (tndsl.interp.sae).", "dim Context",
                 f"dim Model = {self.d_in}", f"dim Features = {self.d_sae}"]
        if self.architecture == "topk":
            lines.append(f"const K = {self.k}")
        lines += ["input x[p: Context, m: Model]", "",
                  block(self.architecture, self.apply_b_dec_to_input), "",
                  f"out[p, m] = {name}(x) as sae", ""]
        return "\n".join(lines)


class SAE(nn.Module):
    """A compiled SAE: `forward(x)` reconstructs, `encode(x)` gives the features,
    `decode(features)` the reconstruction. Params at `sae.W_enc`, ... (state_dict keys)."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        _check_config(cfg)
        self.cfg = cfg
        self.program = parse(cfg.source(), f"<sae {cfg.architecture} {cfg.d_in}x{cfg.d_sae}>")
        self.module = self.program.module(["sae.features", "out"])
        # The unsteered reconstruction, for the error term: the same params, no hooks.
        self._clean = [self.program.module(["out"])]

    @property
    def hook_name(self) -> str | None:
        return self.cfg.hook_name

    @property
    def features_name(self) -> str:
        """The hook name of the feature activations once attached."""
        return f"{self.cfg.hook_name}.sae.features"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)["out"]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)["sae.features"]

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.module.sae.W_dec + self.module.sae.b_dec

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction with no hook of the SAE's own applied."""
        clean = self._clean[0]
        for name, param in self.module.named_parameters():  # share, never copy
            *path, leaf = name.split(".")
            owner = clean.get_submodule(".".join(path)) if path else clean
            owner._parameters[leaf] = param
        return clean(x)


# ---- loading --------------------------------------------------------------------------------

def load(folder: str | Path, dtype: torch.dtype | None = None,
         device: str | torch.device | None = None) -> SAE:
    """An SAE from the common folder layout (SAELens's): `cfg.json` (`d_in`, `d_sae`,
    `hook_name` — also under `metadata` — and the architecture or `activation_fn_str`;
    `k` for TopK) and `sae_weights.safetensors` (`W_enc` [d_in, d_sae], `W_dec`
    [d_sae, d_in], `b_enc`, `b_dec`, and `threshold` for JumpReLU). Offline."""
    folder = Path(folder)
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SAEError(f"cannot read {folder / CONFIG_FILE}: {e}") from None
    if not isinstance(raw, dict):
        raise SAEError(f"{folder / CONFIG_FILE} is not a JSON object")
    from safetensors.torch import load_file
    try:
        weights = load_file(str(folder / WEIGHTS_FILE))
    except Exception as e:  # safetensors raises several kinds
        raise SAEError(f"cannot read {folder / WEIGHTS_FILE}: {e}") from None
    cfg = config_from_dict(raw, weights)
    sae = SAE(cfg)
    if "W_enc" in weights and weights["W_enc"].is_floating_point():
        sae = sae.to(weights["W_enc"].dtype)  # copied in at full precision
    _load_weights(sae, weights, folder / WEIGHTS_FILE)
    return sae.to(device=device, dtype=dtype)


def config_from_dict(raw: dict, weights: dict | None = None) -> SAEConfig:
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    architecture = raw.get("architecture")
    activation = raw.get("activation_fn_str") or raw.get("activation_fn")
    if architecture is None:
        architecture = {"relu": "standard", "topk": "topk"}.get(activation, "standard")
        if weights is not None and "threshold" in weights:
            architecture = "jumprelu"
    if architecture == "relu":
        architecture = "standard"
    if architecture not in ARCHITECTURES:
        raise SAEError(f"SAE architecture {architecture!r} is not supported; supported: "
                       + ", ".join(ARCHITECTURES))
    kwargs = raw.get("activation_fn_kwargs") if isinstance(raw.get("activation_fn_kwargs"),
                                                           dict) else {}
    k = raw.get("k", kwargs.get("k"))
    values = {}
    for key in ("d_in", "d_sae"):
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SAEError(f"cfg.json: {key} must be a positive integer, not {value!r}")
        values[key] = value
    hook = raw.get("hook_name") or metadata.get("hook_name")
    return SAEConfig(architecture, values["d_in"], values["d_sae"],
                     hook if isinstance(hook, str) else None,
                     int(k) if isinstance(k, (int, float)) and not isinstance(k, bool) else k,
                     bool(raw.get("apply_b_dec_to_input", True)))


def _check_config(cfg: SAEConfig) -> None:
    if cfg.architecture == "topk" and (not isinstance(cfg.k, int) or cfg.k < 1):
        raise SAEError(f"a TopK SAE needs k, a whole number >= 1 (cfg.json `k`), not {cfg.k!r}")


def _load_weights(sae: SAE, weights: dict, where: Path) -> None:
    cfg = sae.cfg
    shapes = {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, cfg.d_in),
              "b_enc": (cfg.d_sae,), "b_dec": (cfg.d_in,)}
    if cfg.architecture == "jumprelu":
        shapes["threshold"] = (cfg.d_sae,)
    problems = [f"`{name}` is missing" for name in shapes if name not in weights]
    problems += [f"`{name}` has shape {tuple(weights[name].shape)}, expected {shape}"
                 for name, shape in shapes.items()
                 if name in weights and tuple(weights[name].shape) != shape]
    if problems:
        raise SAEError(f"{where}: " + "; ".join(problems))
    load_state(sae.module, {f"sae.{name}": weights[name] for name in shapes})


# ---- splicing into a model --------------------------------------------------------------------

# TransformerLens hook names (what SAELens configs name) → the `.tn` names of the families.
_TL_SUFFIXES = {"hook_resid_pre": "resid_pre", "hook_resid_mid": "resid_mid",
                "hook_resid_post": "out", "attn.hook_z": "attn.z",
                "hook_attn_out": "attn.out", "hook_mlp_out": "mlp.out",
                "mlp.hook_post": "mlp.post", "mlp.hook_pre": "mlp.pre"}


def resolve(model: nn.Module, hook_name: str | None, sae: SAE | None = None) -> str:
    """The model's hook name for `hook_name` (default: the SAE's), accepting the
    TransformerLens spellings SAELens configs use (`blocks.3.hook_resid_post`)."""
    name = hook_name if hook_name is not None else (sae.hook_name if sae else None)
    if name is None:
        raise SAEError("no hook name: the SAE's cfg.json names none; give one")
    points = hook_points(model)
    if name in points:
        return name
    for tl, tn in _TL_SUFFIXES.items():
        parts = name.split(".")
        if len(parts) > 2 and parts[0] == "blocks" and ".".join(parts[2:]) == tl:
            candidate = f"blocks.{parts[1]}.{tn}"
            if candidate in points:
                return candidate
    raise UnknownNameError(f"no hook point `{name}` in this model",
                           hint=did_you_mean(name, points) or "tndsl.hooks.hook_names(model)")


class Attachment:
    """An SAE spliced into a model: `.remove()` (or leaving its `with` block) undoes it."""

    def __init__(self, model, point, handles, sae, name, child):
        self.model, self.point, self.handles, self.sae = model, point, handles, sae
        self.hook_name, self._child = name, child

    @property
    def features_name(self) -> str:
        return f"{self.hook_name}.sae.features"

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if self._child in self.point._modules:
            del self.point._modules[self._child]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


ATTACHED = "tndsl_sae"  # the SAE's compiled module, as a child of the hook point


def attach(model: nn.Module, hook_name: str | None, sae: SAE, *,
           keep_error: bool = False) -> Attachment:
    """Splice `sae` in at `hook_name` (None: the SAE's own): the activation is replaced by
    its reconstruction, plus the unsteered reconstruction's error if `keep_error` (then
    the output is unchanged until a feature is). The SAE's hook points join the model's
    under `<hook name>.sae.`."""
    name = resolve(model, hook_name, sae)
    point = hook_points(model)[name]
    if ATTACHED in point._modules:
        raise SAEError(f"an SAE is already attached at `{name}`; remove it first")
    d_in = sae.cfg.d_in

    def splice(module, args, activation):
        x, restore = _as_rows(activation, d_in, name)
        out = sae.module(x)["out"]
        if keep_error:
            out = out + (x - sae.clean(x))
        return restore(out)

    point.add_module(ATTACHED, sae.module)
    handle = point.register_forward_hook(splice)
    return Attachment(model, point, [handle], sae, name, ATTACHED)


def _as_rows(activation: torch.Tensor, d_in: int, name: str):
    """The activation with trailing dims flattened to the SAE's input size (an SAE on
    `attn.z` reads heads × head as one vector), and the way back."""
    shape = activation.shape
    for k in range(1, activation.dim() + 1):
        if math.prod(shape[activation.dim() - k:]) == d_in:
            if k == 1:
                return activation, lambda y: y
            return activation.flatten(-k), lambda y: y.unflatten(-1, shape[activation.dim() - k:])
    raise SAEError(f"the SAE reads vectors of {d_in}; `{name}` has shape {tuple(shape)}")


def steer(model: nn.Module, sae: SAE, feature: int, value: float, *,
          hook_name: str | None = None, mode: str = "clamp") -> Attachment:
    """Set feature `feature`'s activation to `value` at every position (`mode="add"`:
    add it; `"scale"`: multiply by it), with the SAE attached with its error term (so
    nothing else changes). Active until `.remove()` or the end of its `with` block; lasts
    through `generate`."""
    if isinstance(feature, bool) or not isinstance(feature, int) or \
            not 0 <= feature < sae.cfg.d_sae:
        raise SAEError(f"feature must be an index in 0..{sae.cfg.d_sae - 1}, not {feature!r}")
    if mode not in ("clamp", "add", "scale"):
        raise SAEError(f"mode must be 'clamp', 'add' or 'scale', not {mode!r}")
    attachment = attach(model, hook_name, sae, keep_error=True)
    features = hook_points(model)[attachment.features_name]

    def change(module, args, acts):
        acts = acts.clone()
        if mode == "clamp":
            acts[..., feature] = value
        elif mode == "add":
            acts[..., feature] += value
        else:
            acts[..., feature] *= value
        return acts

    attachment.handles.append(features.register_forward_hook(change))
    return attachment


def feature_activations(model: nn.Module, sae: SAE, tokens, *, hook_name=None,
                        **kwargs) -> torch.Tensor:
    """The SAE's feature activations on `tokens` ([..., positions, d_sae]), the model's
    output unchanged (attached with its error term, for this call only)."""
    from tndsl.interp.hooks import run_with_cache
    with attach(model, hook_name, sae, keep_error=True) as attachment:
        _, cache = run_with_cache(model, tokens, names=[attachment.features_name], **kwargs)
    return cache[attachment.features_name]
