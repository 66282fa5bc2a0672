"""Reading and changing a compiled model's named intermediates during a forward pass.

Every equation of a compiled model is a hook point named by its `.tn` path
(`blocks.1.attn.pattern`, `resid1`, `blocks.0.out`); `hook_names(model)` lists them.

    logits, cache = run_with_cache(model, tokens, names=["blocks.0.attn.pattern"])
    with intervene(model, {"blocks.0.attn.out": scale(0.0)}):     # ablate a block
        ablated = model(tokens)

Interventions are ordinary torch operations, so gradients flow through them.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from tndsl.errors import TnError, UnknownNameError, did_you_mean

Hook = Callable[[torch.Tensor], "torch.Tensor | None"]


def hook_names(model: nn.Module) -> tuple[str, ...]:
    """The hook points of a compiled model, in the order the forward pass computes them."""
    names = getattr(model, "HOOK_NAMES", None)
    if names is None:
        raise TnError("not a tndsl-compiled model: it has no HOOK_NAMES")
    return tuple(names)


def _check(model: nn.Module, names: Iterable[str]) -> None:
    known = hook_names(model)
    for name in names:
        if name not in known:
            raise UnknownNameError(f"no hook point `{name}` in this model",
                                   hint=did_you_mean(name, known) or
                                   "compile the outputs that need it; hook_names(model) lists them")


@contextmanager
def intervene(model: nn.Module, hooks: Mapping[str, Hook | Iterable[Hook]]):
    """Run the `with` body with these hooks registered; each hook gets the value and
    returns a replacement (or None to leave it)."""
    _check(model, hooks)
    saved = {name: list(fns) for name, fns in model.tndsl_hooks.items()}
    try:
        for name, fns in hooks.items():
            fns = [fns] if callable(fns) else list(fns)
            model.tndsl_hooks.setdefault(name, []).extend(fns)
        yield model
    finally:
        model.tndsl_hooks.clear()
        model.tndsl_hooks.update(saved)


def run_with_cache(model: nn.Module, *args, names: Iterable[str] | None = None,
                   detach: bool = True, **kwargs):
    """The model's output and a dict of the named intermediates (all hook points when
    `names` is None). Reading a cache does not change the output."""
    names = list(hook_names(model) if names is None else names)
    cache: dict[str, torch.Tensor] = {}

    def store(name: str) -> Hook:
        def hook(value: torch.Tensor) -> None:
            cache[name] = value.detach() if detach else value
        return hook

    with intervene(model, {name: store(name) for name in names}):
        output = model(*args, **kwargs)
    return output, cache


# ---- interventions ----------------------------------------------------------------------

def replace(value: torch.Tensor | float) -> Hook:
    """Use `value` (broadcast to the activation's shape) instead of the activation."""
    return lambda activation: torch.broadcast_to(torch.as_tensor(
        value, dtype=activation.dtype, device=activation.device), activation.shape)


def add(delta: torch.Tensor | float) -> Hook:
    return lambda activation: activation + delta


def scale(factor: torch.Tensor | float) -> Hook:
    """Multiply the activation; `scale(0.0)` zero-ablates it."""
    return lambda activation: activation * factor


def clamp(direction: torch.Tensor, value: torch.Tensor | float, dim: int = -1) -> Hook:
    """Set the activation's component along `direction` (over dimension `dim`) to `value`,
    leaving the orthogonal part: x - (x·d̂) d̂ + value d̂."""
    def hook(activation: torch.Tensor) -> torch.Tensor:
        unit = direction.to(activation) / direction.norm()
        shape = [1] * activation.dim()
        shape[dim] = -1
        unit = unit.reshape(shape)
        along = (activation * unit).sum(dim=dim, keepdim=True)
        return activation - along * unit + value * unit
    return hook
