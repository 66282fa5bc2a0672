"""Projection fusion: equations of one scope that contract the same activation over the
same legs with different params become one GEMM.

    q[p, h, e] = x[p, m] * W_Q[h, m, e] + b_Q[h, e] * ones[p]
    k[p, h, e] = x[p, m] * W_K[h, m, e] + b_K[h, e] * ones[p]      ->  one F.linear(x, W, b)
    v[p, h, e] = x[p, m] * W_V[h, m, e] + b_V[h, e] * ones[p]          split into q, k, v

and likewise Llama's `q_pre`, `k_pre`, `v` and a gated MLP's `gate = silu(x · W_gate)`
and `pre = x · W_in` (an element-wise box around the product is applied to its part of
the result). A pure function of a scope's planned items: the projections are replaced by
one `FusedProjections` at the position of the first of them (each reads only the shared
activation and params, so computing the later ones earlier changes nothing); it keeps
the equations, for their hook points and for the explicit path code generation takes
where packing the weights is not possible (sharded params).
"""
from __future__ import annotations

from dataclasses import dataclass

from tndsl.lang import ir

# Boxes applied element-wise to a projection's part of the fused result.
ELEMENTWISE_BOXES = frozenset({"step", "relu", "gelu", "gelu_tanh", "gelu_bloom", "tanh", "sigmoid", "silu", "exp",
                               "identity"})


@dataclass(frozen=True)
class Projection:
    """One equation `name[rows..., outs...] = box?(x[rows..., ks...] * W[...] + b[...] * ones)`."""

    equation: ir.Equation
    weight: str
    weight_indices: tuple[str, ...]   # as the equation names them
    bias: str | None
    bias_indices: tuple[str, ...]
    box: str | None                   # element-wise function around the product, if any
    outs: tuple[str, ...]             # the equation's legs after the rows (W's own legs)
    contracted: tuple[str, ...]       # x's trailing legs, summed with W's

    @property
    def name(self) -> str:
        return self.equation.name


@dataclass(frozen=True)
class FusedProjections:
    argument: str                     # the shared activation x
    parts: tuple[Projection, ...]

    @property
    def name(self) -> str:
        return self.parts[0].name

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parts)

    @property
    def equations(self) -> tuple[ir.Equation, ...]:
        return tuple(p.equation for p in self.parts)

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(p.weight for p in self.parts) + \
            tuple(p.bias for p in self.parts if p.bias)

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.argument,) + self.params


def fuse_projections(items: tuple, values: frozenset[str], params: frozenset[str],
                     runtime: frozenset[str]) -> tuple:
    """`values`: names that may be the shared activation (computed values and float
    inputs); `params`: the params; `runtime`: dims whose size is known only at run time
    (a projection's weight legs must have fixed sizes: the packed weight is a matrix).
    Outputs need no care: every projection is still materialised under its name."""
    groups: dict[tuple, list[Projection]] = {}
    for item in items:
        if not isinstance(item, ir.Equation):
            continue
        match = _match(item, values, params, runtime)
        if match is not None:
            projection, x, rows = match
            # The same activation, contracted over the same of its legs (by position),
            # and biased or not alike (a missing bias is not packed as zeros).
            key = (x.name, len(x.indices), rows, projection.bias is not None,
                   tuple(_dim(item, i) for i in projection.contracted))
            groups.setdefault(key, []).append(projection)
    fused: dict[str, FusedProjections] = {}
    members: set[str] = set()
    for key, group in groups.items():
        if len(group) < 2:
            continue
        fusion = FusedProjections(key[0], tuple(group))
        fused[group[0].name] = fusion
        members.update(fusion.names)
    if not fused:
        return items
    result = []
    for item in items:
        name = getattr(item, "name", None)
        if isinstance(item, ir.Equation) and name in fused:
            result.append(fused[name])
        elif not (isinstance(item, ir.Equation) and name in members):
            result.append(item)
    return tuple(result)


def _dim(eq: ir.Equation, index: str) -> str | None:
    return next((leg.dim for leg in eq.index_dims or () if leg.name == index), None)


def _match(eq: ir.Equation, values, params, runtime):
    """(projection, x ref, number of row legs) or None."""
    terms, box = eq.rhs.terms, None
    if len(terms) == 1 and terms[0].coefficient == 1 and len(terms[0].factors) == 1 and \
            isinstance(terms[0].factors[0], ir.Box):
        outer = terms[0].factors[0]
        if outer.legs or outer.function not in ELEMENTWISE_BOXES:
            return None
        box, terms = outer.function, outer.argument.terms
    if not 1 <= len(terms) <= 2 or any(t.coefficient != 1 for t in terms):
        return None
    indices = tuple(eq.indices)
    if len(set(indices)) != len(indices) or eq.index_dims is None:
        return None
    product, bias = None, None
    for term in terms:
        refs = term.factors
        if not all(isinstance(f, ir.Ref) for f in refs):
            return None
        names = [f.name for f in refs]
        if len(refs) == 2 and product is None and ir.ONES not in names:
            product = refs
        elif bias is None and sum(n != ir.ONES for n in names) == 1:
            bias = refs
        else:
            return None
    if product is None:
        return None
    a, b = product
    if a.name in params and b.name in values:
        a, b = b, a
    x, w = a, b
    if x.name not in values or w.name not in params or x.name == w.name:
        return None
    if len(set(x.indices)) != len(x.indices) or len(set(w.indices)) != len(w.indices):
        return None
    contracted = tuple(i for i in x.indices if i in w.indices)
    rows = tuple(i for i in x.indices if i not in w.indices)
    outs = tuple(i for i in w.indices if i not in x.indices)
    # x laid out as rows then contracted legs; the result as rows then W's own legs.
    if not contracted or not outs or tuple(x.indices) != rows + contracted or \
            indices[:len(rows)] != rows or set(indices[len(rows):]) != set(outs) or \
            len(indices) != len(rows) + len(outs):
        return None
    dims = {leg.name: leg.dim for leg in eq.index_dims}
    if any(dims.get(i) is None or dims[i] in runtime for i in contracted + outs):
        return None
    bias_name, bias_indices = None, ()
    if bias is not None:
        (b_ref,) = [f for f in bias if f.name != ir.ONES]
        ones = {i for f in bias if f.name == ir.ONES for i in f.indices}
        if b_ref.name not in params or sorted(b_ref.indices) != sorted(outs) or \
                len(set(b_ref.indices)) != len(b_ref.indices) or ones != set(rows):
            return None
        bias_name, bias_indices = b_ref.name, tuple(b_ref.indices)
    projection = Projection(eq, w.name, tuple(w.indices), bias_name, bias_indices, box,
                            indices[len(rows):], contracted)
    return projection, x, len(rows)
