"""Reading and changing a compiled model's named intermediates during a forward pass.

Every equation of a compiled model passes through a `HookPoint` submodule (an
`nn.Identity`) next to its params: `blocks.1.attn.pattern` at module path
`blocks.1.attn.hook_pattern`. Plain PyTorch forward hooks on those modules read and
replace values; this module adds names and conveniences on top of them:

    logits, cache = run_with_cache(model, tokens, names=["blocks.0.attn.pattern"])
    with intervene(model, {"blocks.0.attn.out": scale(0.0)}):     # ablate a block
        ablated = model(tokens)

`hook_names(model)` lists the names in the order the forward pass computes them;
`hook_points(model)` maps each to its module. Interventions are ordinary torch
operations, so gradients flow through them.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from tndsl.lang.errors import TnError, UnknownNameError, did_you_mean

Hook = Callable[[torch.Tensor], "torch.Tensor | None"]


def hook_points(model: nn.Module) -> dict[str, nn.Module]:
    """`.tn` name -> hook-point module, in the order the forward pass computes them."""
    if not hasattr(type(model), "HOOK_ORDER"):
        raise TnError("not a tndsl-compiled model: it has no HOOK_ORDER")
    points: dict[str, nn.Module] = {}

    def place(member: nn.Module, names: str, entry: str) -> None:
        """`names`: the hook-name prefix of the class `member` belongs to, at `entry`."""
        if hasattr(type(member), "HOOK_ORDER"):
            walk(member, _join(names, entry))
            return
        # A HookPoint: its name is relative to the class that owns it.
        name = _join(names, member.tn_name)
        points[name] = member
        for child in member.children():  # a compiled model spliced in here (an SAE)
            if hasattr(type(child), "HOOK_ORDER"):
                walk(child, name)

    def walk(module: nn.Module, names: str) -> None:
        for entry in type(module).HOOK_ORDER:
            if isinstance(entry, tuple):  # ModuleLists iterated together (a loop)
                lists = [module.get_submodule(p) for p in entry]
                for i, members in enumerate(zip(*lists)):
                    for name, member in zip(entry, members):
                        place(member, names, f"{name}.{i}")
            else:
                place(module.get_submodule(entry), names, entry)

    walk(model, "")
    return points


def _join(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix else path


def hook_names(model: nn.Module) -> tuple[str, ...]:
    """The hook points of a compiled model, in the order the forward pass computes them."""
    return tuple(hook_points(model))


def _lookup(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    points = hook_points(model)
    for name in names:
        if name not in points:
            raise UnknownNameError(f"no hook point `{name}` in this model",
                                   hint=did_you_mean(name, points) or
                                   "compile the outputs that need it; hook_names(model) lists them")
    return points


@contextmanager
def intervene(model: nn.Module, hooks: Mapping[str, Hook | Iterable[Hook]]):
    """Run the `with` body with these hooks registered; each hook gets the value and
    returns a replacement (or None to leave it). They are forward hooks on the hook-point
    modules, removed on exit."""
    points = _lookup(model, hooks)
    with ExitStack() as stack:
        for name, fns in hooks.items():
            fns = [fns] if callable(fns) else list(fns)
            for fn in fns:
                handle = points[name].register_forward_hook(_adapt(fn))
                stack.callback(handle.remove)
        yield model


def _adapt(fn: Hook):
    def hook(module, args, output):
        return fn(output)
    return hook


def run_with_cache(model: nn.Module, *args, names: Iterable[str] | None = None,
                   detach: bool = True, **kwargs):
    """The model's output and a dict of the named intermediates (all hook points when
    `names` is None). Reading a cache does not change the output (a fused attention
    whose pattern is cached runs its explicit path, which computes the same values)."""
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
