"""How a generated `forward` checks its inputs and reads its params and hook points,
written for a small per-call cost.

A small model's forward costs a few microseconds, and plain attribute reads are a large
part of it: `self.W` on an `nn.Module` first fails the normal lookup (an internal
AttributeError) and then runs `nn.Module.__getattr__`, about 1 us per name, as long as
a 64 x 64 matrix-vector product. So the generated code reads its own params from
`self._parameters` and its hook points from `self._modules` (dict reads, ~40 ns),
bound once per call to the locals below, and tests the common case of an input inline
before calling `_check_input`, which says what is wrong.

The semantics stay PyTorch's:
- a param is read from `_parameters` only while it is there; where something has
  replaced it by another kind of attribute (a `torch.nn.utils.parametrize`
  parametrization, FSDP1's plain-tensor views, `weight_norm`) the read falls back to
  `self.W`, which resolves it as PyTorch would. FSDP2, DTensor sharding and
  `torch.func.functional_call` swap params inside `_parameters`, so they are seen too.
  Nothing is cached between calls, and params are never aliased in `__dict__`;
- `self._modules['hook_y']` is the object `self.hook_y` returns (`nn.Module.__setattr__`
  keeps submodules only there), so hooks registered on it, or globally, still fire.

Every local named here starts with an underscore, which no name from a `.tn` file does
(`codegen.names.sanitize` strips them), so none can clash.
"""
from __future__ import annotations

from typing import Sequence

MODULES = "_modules"
PARAMETERS = "_parameters"
HOOKS = "_hooks"  # whether any hook point may need calling this call: `_hooks_on()`


def input_guard(arg: str, shape: Sequence[int | None], ids: bool,
                at_most: Sequence[int] = ()) -> str:
    """A condition that is false exactly when `_check_input(arg, ...)` would accept
    `arg` at once: a plain `torch.Tensor` with at least the declared legs, each sized
    as declared (at most the size for a position in `at_most`; any size for None), and
    of an integer dtype when it holds ids. A tensor subclass always takes the full check
    (which accepts it when it fits)."""
    n = len(shape)
    parts = [f"type({arg}) is not torch.Tensor"]
    if n:
        parts.append(f"{arg}.ndim < {n}")
    for k, size in enumerate(shape):
        if size is not None:
            parts.append(f"{arg}.shape[{k - n}] {'>' if k in at_most else '!='} {size}")
    if ids:
        parts.append(f"{arg}.is_floating_point() or {arg}.is_complex()")
    return " or ".join(parts)


def ids_guard(arg: str, vocab: int | None) -> str:
    """A condition that is false exactly when `arg`, an integer tensor of token ids, is
    int64 with every id in [0, vocab); otherwise `_check_ids(arg, ...)` says what is
    wrong or returns the ids as int64. One min and one max per call (none for an empty
    tensor); under torch.compile, where a branch on data would break the graph,
    `_check_ids` always runs and asserts the range with an op instead."""
    high = f" or {arg}.max() >= {vocab}" if vocab is not None else ""
    return (f"{arg}.dtype is not torch.int64 or torch.compiler.is_compiling() "
            f"or {arg}.numel() and ({arg}.min() < 0{high})")


def own(path: str) -> bool:
    """Whether `path` (relative to the generated class) names a direct child or param,
    which the dict reads below serve; deeper paths keep attribute access."""
    return bool(path) and "." not in path


def param_read(path: str, attribute: str) -> str:
    """The expression for the param at `path`; `attribute` is its `self.` spelling."""
    if not own(path):
        return attribute
    return f"{PARAMETERS}[{path!r}] if {path!r} in {PARAMETERS} else {attribute}"


def hook_point(path: str, attribute: str) -> str:
    """The expression for the hook point at `path`; `attribute` is its `self.` spelling."""
    return f"{MODULES}[{path!r}]" if own(path) else attribute


def hook_test(*hook_points: str) -> str:
    """The condition under which the generated code calls a hook point (any of several):
    one test per call (`_hooks`) while no hook point of the file was ever given a hook,
    then the hook point's own `.hooked`."""
    tests = " or ".join(f"{h}.hooked" for h in hook_points)
    return f"{HOOKS} and {tests if len(hook_points) == 1 else f'({tests})'}"


def local_bindings(used: set[str]) -> list[str]:
    """The statements binding the dicts in `used` (of MODULES, PARAMETERS) and the hook
    test (HOOKS), if used."""
    names = [n for n in (MODULES, PARAMETERS) if n in used]
    lines = []
    if names:
        lines += ["# Dict reads, not nn.Module.__getattr__ (~1 us a name): tndsl.codegen.prologue",
                  f"{', '.join(names)} = {', '.join(f'self.{n}' for n in names)}"]
    if HOOKS in used:
        lines.append(f"{HOOKS} = _hooks_on()")
    return lines


def matrix_vector(weight: str, x: str, batched: bool) -> str:
    """`weight (out, in) · x (in)`: `torch.mv` for a vector (half the time of
    `F.linear`, which takes its matrix path for a 1-D input), or `F.linear` where `x`
    may carry batch dims, chosen by its rank at run time (bracketed then)."""
    if not batched:
        return f"torch.mv({weight}, {x})"
    return f"(torch.mv({weight}, {x}) if {x}.ndim == 1 else F.linear({x}, {weight}))"
