"""Code for `passes.fuse_projections`: one GEMM for projections sharing an activation.

    packed = _packed(self, 'q', (W_Q, W_K, W_V, b_Q, b_K, b_V), lambda: (
        torch.cat([W_Q.permute(1, 0, 2), W_K.permute(1, 0, 2), W_V.permute(1, 0, 2)], 1).reshape(768, 2304).t(),
        torch.cat([b_Q.reshape(-1), b_K.reshape(-1), b_V.reshape(-1)])))
    if packed is None:    # under grad, or sharded params: one GEMM each
        q = ...; k = ...; v = ...
    else:
        projected = F.linear(x, *packed)
        q = projected[..., :768].unflatten(-1, (12, 64))  ...

The parts are views (slices) of the one result (no copies); a part whose equation has a box
around the product gets the box (`F.silu(projected[..., :n])`). The weight is packed (in, out) by one
`torch.cat` (each param permuted inside it, never reshaped on its own) and passed to
F.linear transposed, and `_packed` keeps it on the module across calls where no autograd graph
needs it (see the helper's docstring). Under grad the original equations run: packing
per call (one more copy of the weights, and its backward) cost more than the one GEMM
saved (measured on CPU, docs/performance.md). Hook points follow, in the equations' order.
"""
from __future__ import annotations

import math

from tndsl.codegen.lower import ELEMENTWISE, Lowering, Value
from tndsl.passes.fuse_projections import FusedProjections, Projection
from tndsl.lang.text import python_comment

# A generated class holding fused projections drops its packed weights when `.to()`,
# `.double()`, `.half()` ... convert its params (which keeps their version counters).
APPLY_METHOD = [
    "def _apply(self, *args, **kwargs):",
    "    # .to(), .double(), .half(): packed weights are rebuilt from the converted params",
    "    self.__dict__.pop('_tndsl_packed', None)",
    "    return super()._apply(*args, **kwargs)",
]


def _sizes(lower: Lowering, projection: Projection, legs) -> tuple[int, ...]:
    dims = {leg.name: leg.dim for leg in projection.equation.index_dims}
    return tuple(int(lower.sizes[dims[i]]) for i in legs)


def _permuted(var: str, have: tuple[str, ...], want: tuple[str, ...]) -> str:
    if have == want:
        return var
    return f"{var}.permute{tuple(have.index(i) for i in want)}"


def pack_code(lower: Lowering, fused: FusedProjections) -> tuple[str, str | None]:
    """The expressions building the packed weight and bias (None: no biases) from the
    params' locals. The weight is built (in, out) and handed to F.linear transposed (a
    view): each param is then copied with its output legs innermost, as it is stored
    for `x @ W` (GPT-2's `W_Q[h, m, e]` in runs of `e`), where an (out, in) copy would
    transpose every head's (m, e) block, several times slower."""
    var = {name: lower.values[name].var for name in fused.params}
    contracted = len(fused.parts[0].contracted)
    shapes = [_sizes(lower, p, p.contracted + p.outs) for p in fused.parts]
    k = math.prod(shapes[0][:contracted])
    n = sum(math.prod(s[contracted:]) for s in shapes)
    weights = [_permuted(var[p.weight], p.weight_indices, p.contracted + p.outs)
               for p in fused.parts]
    if len({s[contracted + 1:] for s in shapes}) == 1 and \
            len({len(p.outs) for p in fused.parts}) == 1:
        # Alike after their first output leg: concatenate along it, one copy, then a view.
        weight = f"torch.cat([{', '.join(weights)}], {contracted})"
        if len(shapes[0]) > 2:
            weight += f".reshape({k}, {n})"
    else:
        weight = "torch.cat([" + ", ".join(
            w if len(s) == 2 else f"{w}.reshape({k}, {math.prod(s[contracted:])})"
            for w, s in zip(weights, shapes)) + "], 1)"
    weight += ".t()"
    if not fused.parts[0].bias:
        return weight, None
    biases = []
    for p in fused.parts:
        b = _permuted(var[p.bias], p.bias_indices, p.outs)
        biases.append(b if len(p.outs) == 1 else f"{b}.reshape(-1)")
    return weight, f"torch.cat([{', '.join(biases)}])"


def projections(lower: Lowering, fused: FusedProjections, variables: list[str],
                hooks: dict) -> None:
    """`variables`: one per part; `hooks`: equation name -> code of its hook point. The
    packed weight is kept on the module under the group's name."""
    lower.helpers.add("_packed")
    x = lower.values[fused.argument].var
    params = ", ".join(lower.values[name].var for name in fused.params)
    names = ", ".join(python_comment(n) for n in fused.names)
    packed = lower.ns.fresh("packed")
    lower.temporaries.add(packed)
    lower.emit(f"# {names}: one GEMM reading {python_comment(fused.argument)}, the weights "
               "packed into one (kept across calls where no graph needs them)")
    weight, bias = pack_code(lower, fused)
    lower.emit(f"{packed} = _packed(self, {fused.name!r}, ({params}), lambda: (")
    if bias:
        lower.emit(f"    {weight},")
        lower.emit(f"    {bias}))")
    else:
        lower.emit(f"    {weight},))")
    lower.emit(f"if {packed} is None:  # under grad, or sharded params: one GEMM each")
    lower.indent += 1
    for projection, var in zip(fused.parts, variables):
        lower.equation(projection.equation, var, None)
    lower.indent -= 1
    lower.emit("else:")
    lower.indent += 1
    contracted = len(fused.parts[0].contracted)
    left = x if contracted == 1 else f"{x}.flatten(-{contracted})"
    projected = lower.ns.fresh("projected")
    lower.temporaries.add(projected)
    lower.emit(f"{projected} = F.linear({left}, *{packed})")
    start = 0
    for k, (projection, var) in enumerate(zip(fused.parts, variables)):
        # Slices, not .split: a view of a multi-output op may not be changed in place
        # under grad, and hooks do that (`value[..., head, :] = 0`).
        width = math.prod(_sizes(lower, projection, projection.outs))
        end = "" if k == len(fused.parts) - 1 else str(start + width)
        value = f"{projected}[..., {start or ''}:{end}]"
        start += width
        if len(projection.outs) > 1:
            value = f"{value}.unflatten(-1, {_sizes(lower, projection, projection.outs)})"
        if projection.box:
            value = ELEMENTWISE[projection.box].format(value)
        lower.emit(f"{var} = {value}")
    lower.indent -= 1
    batched = lower.values[fused.argument].batched
    for projection, var in zip(fused.parts, variables):
        lower.through_hook(var, hooks.get(projection.name))
        lower.values[projection.name] = Value(var, batched)
