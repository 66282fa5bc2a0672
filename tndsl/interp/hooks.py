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

A hook is `fn(value)` or `fn(value, hook)` (`hook.name`, `hook.layer`, `hook.legs`);
names are exact, globs (`blocks.*.attn.z`), lists, or a callable filter; a returned value
of the wrong shape or dtype is a `HookError` naming the hook point. `run_with_cache`
returns an `ActivationCache` (tndsl.interp.cache), records no graph unless asked, and
with `grads=True` caches d metric / d activation; `intervene_backward` hooks gradients.
Each attention instance's per-head output, `blocks.N.attn.result`, is a hook point too,
derived from its output equation and computed only when hooked (docs/workbench.md).
"""
from __future__ import annotations

import fnmatch
import inspect
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import torch
from torch import nn

from tndsl.lang import ir
from tndsl.lang.errors import TnError, UnknownNameError, did_you_mean
from tndsl.interp.cache import ActivationCache
from tndsl.interp.residual import HeadResult, layer_of, residual_stream
from tndsl.interp.terms import Terms, legs_of, lengths_of

Hook = Callable[..., "torch.Tensor | None"]
# Which hook points: one name or glob (`blocks.*.attn.pattern`), a list of them, or a
# callable that takes a name and says yes or no.
Names = Union[str, Sequence[str], Callable[[str], bool]]


class HookError(TnError):
    """A hook returned something its hook point cannot take."""


@dataclass
class HookPointInfo:
    """What a two-argument hook `fn(value, hook)` receives as `hook`: the full `.tn`
    name of the hook point, the loop index where there is one (`blocks.3.attn.z` → 3),
    its legs (`p: Context, h: Heads, e: Head`, where the model has its program), its
    module, and `ctx`, a dict the hook may keep state in for the run."""

    name: str
    layer: int | None
    legs: tuple[str, ...] | None
    module: nn.Module = field(repr=False)
    ctx: dict = field(default_factory=dict, repr=False)


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


def head_results(model: nn.Module) -> dict[str, HeadResult]:
    """The per-head results of a model's attention instances (`blocks.0.attn.result`,
    `[p, h, m]`), derived from each instance's output equation where the file does not
    write them (tndsl.interp.residual): hook points that cost nothing until hooked."""
    program = getattr(model, "tndsl_program", None)
    if program is None:
        return {}
    try:
        stream = residual_stream(program)
    except TnError:
        return {}
    points = hook_points(model)
    found = {}
    for head in stream.heads:
        eq = program.equation(head.equation)
        sources = {f.name for k in head.terms for f in eq.rhs.terms[k].factors
                   if isinstance(f, ir.Ref) and f.name not in _declared(program)
                   and f.name != ir.ONES}
        if head.name not in points and head.equation in points and sources <= set(points):
            found[head.name] = head
    return found


def _declared(program) -> set[str]:
    return {t.name for t in program.network.tensors}


def available(model: nn.Module) -> list[str]:
    """Every name a hook may be registered on, in forward order: the hook points and,
    just before each attention output, its derived per-head `result`."""
    derived = {head.equation: name for name, head in head_results(model).items()}
    names = []
    for name in hook_points(model):
        if name in derived:
            names.append(derived[name])
        names.append(name)
    return names


def select(model: nn.Module, names: Names | None) -> list[str]:
    """The hook names `names` picks, in forward order: None for all; a callable filter;
    a name or glob (`blocks.*.attn.pattern`, `*.z`); or a list of names and globs. An
    exact name or a glob that matches nothing is an error (with a suggestion). The
    derived per-head results (`blocks.0.attn.result`) are names too."""
    points = available(model)
    if names is None:
        return list(points)
    if callable(names):
        return [name for name in points if names(name)]
    patterns = [names] if isinstance(names, str) else list(names)
    chosen: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"hook names are strings, globs or a callable filter, got "
                            f"{type(pattern).__name__}")
        if pattern in points:
            chosen.add(pattern)
            continue
        matched = [n for n in points if fnmatch.fnmatchcase(n, pattern)] \
            if any(c in pattern for c in "*?[") else []
        if not matched:
            raise UnknownNameError(f"no hook point `{pattern}` in this model",
                                   hint=did_you_mean(pattern, points) or
                                   "compile the outputs that need it; hook_names(model) lists them")
        chosen.update(matched)
    return [name for name in points if name in chosen]


def point_legs(model: nn.Module, name: str) -> tuple[tuple[str, str], ...] | None:
    """(leg, dim) of hook point `name`, read from the model's program (None without
    one): an equation's legs, or a derived per-head result's (`p, h, m`)."""
    program = getattr(model, "tndsl_program", None)
    if program is None:
        return None
    derived = head_results(model).get(name)
    if derived is not None:
        dims = legs_of(program.equation(derived.equation))
        return tuple((i, dims[i]) for i in derived.indices)
    try:
        return tuple((leg.name, leg.dim) for leg in program.legs(name))
    except KeyError:
        return None


def _legs(model: nn.Module, name: str) -> tuple[str, ...] | None:
    legs = point_legs(model, name)
    return None if legs is None else tuple(f"{leg}: {dim}" for leg, dim in legs)


def _keyword_names(fn: Callable) -> set[str]:
    try:
        return {p.name for p in inspect.signature(fn).parameters.values()
                if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    except (TypeError, ValueError):
        return set()


def _takes_hook(fn: Callable) -> bool:
    """Whether `fn` takes (value, hook) rather than (value): it has a parameter named
    `hook`, or two positional parameters without defaults (`lambda v, h: ...`). A
    parameter with a default (`def patch(value, head=2)`) is the closure idiom, not a
    hook slot."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.name == "hook" and p.kind in positional + (inspect.Parameter.KEYWORD_ONLY,)
           for p in parameters[1:]):
        return True
    required = [p for p in parameters if p.kind in positional and p.default is p.empty]
    return len(required) >= 2


@contextmanager
def intervene(model: nn.Module, hooks: Mapping[Any, Hook | Iterable[Hook]]
              | Iterable[tuple[Any, Hook]]):
    """Run the `with` body with these hooks registered. `hooks` maps a name, a glob
    (`blocks.*.attn.z`), a tuple of them or a callable filter to a hook or a list of
    hooks (or is a list of such pairs). A hook is `fn(value)` or `fn(value, hook)`
    (`hook.name`, `hook.layer`: `HookPointInfo`) and returns a replacement of the same
    shape and dtype, or None to leave the value; anything else is a `HookError` naming
    the hook point. They are forward hooks on the hook-point modules, removed on exit."""
    pairs = list(hooks.items()) if isinstance(hooks, Mapping) else list(hooks)
    points = hook_points(model)
    derived = head_results(model)
    with ExitStack() as stack:
        for key, fns in pairs:
            names = select(model, list(key) if isinstance(key, tuple) else key)
            fns = [fns] if callable(fns) else list(fns)
            for name in names:
                if name in derived:
                    _hook_result(model, derived[name], fns, points, stack)
                    continue
                info = HookPointInfo(name, layer_of(name), _legs(model, name), points[name])
                for fn in fns:
                    handle = points[name].register_forward_hook(_adapt(fn, info))
                    stack.callback(handle.remove)
        yield model


@contextmanager
def intervene_backward(model: nn.Module, hooks: Mapping[Any, Hook | Iterable[Hook]]
                       | Iterable[tuple[Any, Hook]]):
    """Backward hooks: while the `with` body runs, `fn(grad)` or `fn(grad, hook)` is
    called with d loss / d activation of each chosen hook point (names as for
    `intervene`) during `backward()`, and may return a replacement gradient of the same
    shape and dtype (None leaves it), which then flows to everything upstream."""
    pairs = list(hooks.items()) if isinstance(hooks, Mapping) else list(hooks)
    registered = []
    for key, fns in pairs:
        fns = [fns] if callable(fns) else list(fns)
        for name in select(model, list(key) if isinstance(key, tuple) else key):
            registered.append((name, fns))

    def on_gradient(fns, info):
        adapted = [_adapt(fn, info) for fn in fns]

        def forward(value, hook):
            if not value.requires_grad:
                return None

            def backward(grad):
                for fn in adapted:
                    replaced = fn(None, None, grad)
                    if replaced is not None:
                        grad = replaced
                return grad
            value.register_hook(backward)
            return None
        return forward
    points = hook_points(model)
    wrapped = [(name, on_gradient(fns, HookPointInfo(name, layer_of(name), _legs(model, name),
                                                     points.get(name))))
               for name, fns in registered]
    with intervene(model, wrapped):
        yield model


def _hook_result(model: nn.Module, head: HeadResult, fns, points, stack: ExitStack) -> None:
    """Hooks on a derived per-head result: its factors (`z`) are captured as the forward
    computes them; at the instance's output the result is evaluated, given to `fns`, and
    the output changed by the change they make, summed over heads. Nothing is computed
    unless hooked; the fused attention is untouched."""
    program = model.tndsl_program
    eq = program.equation(head.equation)
    products = [eq.rhs.terms[k] for k in head.terms]
    dims = legs_of(eq)
    sources = sorted({f.name for t in products for f in t.factors
                      if isinstance(f, ir.Ref) and f.name in points})
    live: dict[str, torch.Tensor] = {}
    for source in sources:
        handle = points[source].register_forward_hook(
            lambda module, args, output, source=source: live.__setitem__(source, output))
        stack.callback(handle.remove)
    legs = tuple(f"{i}: {dims[i]}" for i in head.indices)
    info = HookPointInfo(head.name, head.layer, legs, points[head.equation])
    adapted = [_adapt(fn, info) for fn in fns]
    axis = head.indices.index(head.index) - len(head.indices)

    def apply(module, args, output):
        value = live[sources[0]]
        legs_there = len(program.legs(sources[0]))
        terms = Terms(program, live, dict(model.named_parameters()),
                      batch_shape=tuple(value.shape[:value.dim() - legs_there]),
                      dtype=output.dtype, lengths=lengths_of(program, sources[0], value),
                      detach=False)
        result = sum(terms.term(t, head.indices, dims) for t in products)
        new = result
        for hook in adapted:
            replaced = hook(module, args, new)
            if replaced is not None:
                new = replaced
        live.clear()
        if new is result:
            return None
        return output + (new - result).sum(dim=axis)
    handle = points[head.equation].register_forward_hook(apply)
    stack.callback(handle.remove)


def _adapt(fn: Hook, info: HookPointInfo):
    two = _takes_hook(fn)
    if two and "hook" in _keyword_names(fn):
        two = "keyword"

    def hook(module, args, output):
        result = (fn(output, hook=info) if two == "keyword" else fn(output, info)) \
            if two else fn(output)
        if result is None or result is output:
            return result
        if not isinstance(result, torch.Tensor):
            raise HookError(f"the hook on `{info.name}` returned {type(result).__name__}, "
                            "not a tensor", hint="return a tensor of the activation's shape, "
                            "or None to leave it")
        if result.shape != output.shape or result.dtype != output.dtype \
                or result.device != output.device:
            legs = f"[{', '.join(info.legs)}]" if info.legs else ""
            raise HookError(
                f"the hook on `{info.name}` returned {tuple(result.shape)} {result.dtype} "
                f"on {result.device}; the hook point `{info.name}{legs}` holds "
                f"{tuple(output.shape)} {output.dtype} on {output.device} (leading batch "
                "dims first)", hint="return a tensor of the same shape, dtype and device")
        return result
    return hook


def _grad_mode(grad: bool):
    """No graph unless asked for. `torch.no_grad()`, not `inference_mode()`: a tensor
    made in inference mode can never meet a param that requires grad (`cache["z"] @
    W_O` would raise), and the two cost the same here."""
    return nullcontext() if grad else torch.no_grad()


def run_with_hooks(model: nn.Module, *args, hooks=(), grad: bool = False, **kwargs):
    """`model(*args, **kwargs)` with `hooks` (as for `intervene`) registered, recording
    no autograd graph (`torch.no_grad()`) unless `grad=True`."""
    with _grad_mode(grad), intervene(model, hooks):
        return model(*args, **kwargs)


def _inputs(model: nn.Module, args, kwargs) -> dict[str, torch.Tensor]:
    """The forward's arguments by name (the `.tn` input names)."""
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError:
        return {}
    return {k: v for k, v in bound.arguments.items() if isinstance(v, torch.Tensor)}


def run_with_cache(model: nn.Module, *args, names: Names | None = None,
                   detach: bool = True, grads: bool = False,
                   metric: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   hooks=(), program=None, **kwargs):
    """The model's output and an `ActivationCache` of the hook points `names` picks (all
    when None; a name, glob, list or callable filter). Records no autograd graph
    (`torch.no_grad()`), so the output carries no `grad_fn`, unless `detach=False` or
    `grads=True`. `grads=True` also caches d(metric(output))/d(activation) for each
    name (`cache.grads`); `metric` maps the output to a scalar. `hooks` are registered
    as well (as for `intervene`), before the cache reads. Reading a cache does not change
    the output (a fused attention whose pattern is cached runs its explicit path, which
    computes the same values)."""
    chosen = select(model, names)
    if grads and metric is None:
        raise TnError("grads=True needs a metric: a function of the output giving a scalar")
    cache: dict[str, torch.Tensor] = {}
    gradients: dict[str, torch.Tensor] = {}

    def store(value: torch.Tensor, hook: HookPointInfo):
        if grads:
            # value + 0, the 0 a leaf: the same values exactly, gradients upstream
            # unchanged, and the leaf's gradient is d metric / d activation.
            zero = torch.zeros_like(value, requires_grad=True)
            zero.register_hook(lambda g, name=hook.name: gradients.__setitem__(
                name, g.detach()))
            cache[hook.name] = value.detach()
            return value + zero
        cache[hook.name] = value.detach() if detach else value
        return None

    all_hooks = (list(hooks.items()) if isinstance(hooks, Mapping) else list(hooks)) \
        + [(chosen, store)]
    with _grad_mode(grads or not detach), intervene(model, all_hooks):
        output = model(*args, **kwargs)
        if grads:
            value = metric(output)
            if value.dim() != 0:
                raise TnError(f"the metric gave shape {tuple(value.shape)}, not a scalar")
            value.backward()
            output = output.detach()
    return output, ActivationCache(cache, model=model, program=program,
                                   inputs=_inputs(model, args, kwargs), grads=gradients)


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
