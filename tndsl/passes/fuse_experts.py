"""Expert dispatch: a mixture of experts whose gates come from a `topk` box runs each
expert on the tokens routed to it only.

The diagram sums over every expert (`Experts` is an ordinary leg, and the reference
evaluator computes all of them densely); because `topk` leaves all but k gates of a
token exactly 0, the other experts' terms are exactly 0 and need not be computed. The
pattern, in a scope's planned items (`x` an activation over token legs `T...` and the
model leg, `X` the expert leg, `F` the expert's hidden leg):

    gates[T..., X] = topk[X](...)                   (or normalize[X](topk[X](...)))
    gate[T..., X, F] = act(x[T..., m] * W_gate[X, m, F])     # a GLU's gate ...
    pre[T..., X, F] = x[T..., m] * W_in[X, m, F]             # ... and its input,
    post[T..., X, F] = gate[T..., X, F] * pre[T..., X, F]
    out[T..., m] = gates[T..., X] * post[T..., X, F] * W_out[X, F, m]

(or `post[T..., X, F] = act(x[T..., m] * W_in[X, m, F])`, a plain MLP; the params' legs
in any order). `gate`, `pre` and `post` must be read only there and not be outputs.
They are replaced by one `FusedExperts` at the position of `out`, which keeps them for
the explicit (dense) path that code generation takes when a hook reads them. Anything
else is left alone and compiled densely, which is equal, only slower.
"""
from __future__ import annotations

from dataclasses import dataclass

from tndsl.lang import ir
from tndsl.passes.fusion import uses

# Element-wise boxes an expert's activation may be (codegen.lower.ELEMENTWISE's names).
ACTIVATIONS = frozenset({"relu", "gelu", "gelu_tanh", "gelu_bloom", "tanh", "sigmoid",
                         "silu", "exp", "identity"})


@dataclass(frozen=True)
class Projection:
    """`x[T..., m] * W[...]`: the param and the order that puts its legs as (X, m, F)."""

    param: str
    order: tuple[int, ...]


@dataclass(frozen=True)
class FusedExperts:
    out: ir.Equation
    inner: tuple[ir.Equation, ...]   # gate, pre, post (or post alone), in order
    gates: str                       # the routing gates (an equation left in place)
    source: str                      # x, the tokens' activation the experts read
    activation: str                  # the element-wise box of the gate (or the MLP)
    w_gate: Projection | None        # None: a plain MLP, post = act(x · W_in)
    w_in: Projection
    w_out: Projection                # its order puts the legs as (X, F, m)

    @property
    def name(self) -> str:
        return self.out.name

    @property
    def equations(self) -> tuple[ir.Equation, ...]:
        return self.inner + (self.out,)

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.source, self.gates)


def fuse_experts(items: tuple, keep: frozenset[str], values: frozenset[str],
                 params: frozenset[str]) -> tuple:
    """`keep`: names that must be materialised; `values`: names an activation may have;
    `params`: the scope's param names."""
    equations = {item.name: item for item in items if isinstance(item, ir.Equation)}
    counts = uses(items)
    fused: dict[str, FusedExperts] = {}
    for eq in equations.values():
        match = _match(eq, equations, counts, keep, values, params)
        if match is not None:
            fused[eq.name] = match
    if not fused:
        return items
    dropped = {e.name for f in fused.values() for e in f.inner}
    return tuple(fused.get(getattr(item, "name", None), item) if isinstance(item, ir.Equation)
                 else item for item in items if getattr(item, "name", None) not in dropped)


def _refs(expr: ir.Sum) -> list[ir.Ref] | None:
    """The refs of a one-term, unscaled product of refs only, else None."""
    if len(expr.terms) != 1 or expr.terms[0].coefficient != 1:
        return None
    factors = expr.terms[0].factors
    return list(factors) if all(isinstance(f, ir.Ref) for f in factors) else None


def _box(expr: ir.Sum, functions, legs: tuple[str, ...] | None = None) -> ir.Box | None:
    if len(expr.terms) != 1 or expr.terms[0].coefficient != 1 or \
            len(expr.terms[0].factors) != 1:
        return None
    box = expr.terms[0].factors[0]
    if isinstance(box, ir.Box) and box.function in functions and \
            (legs is None or box.legs == legs):
        return box
    return None


def _is_topk(eq: ir.Equation) -> bool:
    """Gates that are 0 outside k entries along their last leg."""
    if not eq.indices:
        return False
    expert = (eq.indices[-1],)
    box = _box(eq.rhs, ("normalize", "topk"), expert)
    if box is not None and box.function == "normalize":
        box = _box(box.argument, ("topk",), expert)
    return box is not None


def _projection(expr: ir.Sum, tokens: tuple[str, ...], expert: str, hidden: str,
                values, params) -> tuple[str, Projection] | None:
    """`x[T..., m] * W[perm of (X, m, F)]` with T, X, F the given index names."""
    refs = _refs(expr)
    if refs is None or len(refs) != 2:
        return None
    for x, w in (refs, refs[::-1]):
        if x.name not in values or w.name not in params or len(x.indices) != len(tokens) + 1:
            continue
        model = x.indices[-1]
        if tuple(x.indices[:-1]) != tokens or sorted(w.indices) != sorted((expert, model, hidden)) \
                or len(set(w.indices)) != 3 or model in tokens:
            continue
        order = tuple(w.indices.index(i) for i in (expert, model, hidden))
        return x.name, Projection(w.name, order)
    return None


def _match(out: ir.Equation, equations, counts, keep, values, params) -> FusedExperts | None:
    refs = _refs(out.rhs)
    if refs is None or len(refs) != 3:
        return None
    by_kind = {}
    for ref in refs:
        if ref.name in params:
            by_kind["w"] = ref
        elif ref.name in equations and _is_topk(equations[ref.name]):
            by_kind["gates"] = ref
        elif ref.name in equations:
            by_kind["post"] = ref
    if len(by_kind) != 3:
        return None
    gates, post_ref, w_out = by_kind["gates"], by_kind["post"], by_kind["w"]
    tokens = tuple(out.indices[:-1])
    model = out.indices[-1]
    if len(gates.indices) != len(tokens) + 1 or tuple(gates.indices[:-1]) != tokens:
        return None
    expert = gates.indices[-1]
    if len(post_ref.indices) != len(tokens) + 2 or \
            tuple(post_ref.indices[:-2]) != tokens or post_ref.indices[-2] != expert:
        return None
    hidden = post_ref.indices[-1]
    if sorted(w_out.indices) != sorted((expert, hidden, model)) or len(set(w_out.indices)) != 3 \
            or len({expert, hidden, model, *tokens}) != len(tokens) + 3:
        return None
    out_order = tuple(w_out.indices.index(i) for i in (expert, hidden, model))
    post = equations[post_ref.name]
    if counts.get(post.name) != 1 or post.name in keep or len(set(post.indices)) != len(post.indices):
        return None
    # The post's own index names: tokens, expert, hidden as it writes them.
    p_tokens, p_expert, p_hidden = tuple(post.indices[:-2]), post.indices[-2], post.indices[-1]
    box = _box(post.rhs, ACTIVATIONS)
    if box is not None:  # a plain MLP: post = act(x · W_in)
        found = _projection(box.argument, p_tokens, p_expert, p_hidden, values, params)
        if found is None:
            return None
        source, w_in = found
        return FusedExperts(out, (post,), gates.name, source, box.function, None, w_in,
                            Projection(w_out.name, out_order))
    pair = _refs(post.rhs)
    if pair is None or len(pair) != 2 or any(tuple(r.indices) != tuple(post.indices)
                                             for r in pair):
        return None
    for gate_ref, pre_ref in (pair, pair[::-1]):
        gate, pre = equations.get(gate_ref.name), equations.get(pre_ref.name)
        if gate is None or pre is None or gate is pre:
            continue
        if any(counts.get(e.name) != 1 or e.name in keep for e in (gate, pre)):
            continue
        box = _box(gate.rhs, ACTIVATIONS)
        if box is None:
            continue
        g_tokens, g_expert, g_hidden = tuple(gate.indices[:-2]), gate.indices[-2], gate.indices[-1]
        i_tokens, i_expert, i_hidden = tuple(pre.indices[:-2]), pre.indices[-2], pre.indices[-1]
        found_gate = _projection(box.argument, g_tokens, g_expert, g_hidden, values, params)
        found_in = _projection(pre.rhs, i_tokens, i_expert, i_hidden, values, params)
        if found_gate is None or found_in is None or found_gate[0] != found_in[0]:
            continue
        return FusedExperts(out, (gate, pre, post), gates.name, found_in[0], box.function,
                            found_gate[1], found_in[1], Projection(w_out.name, out_order))
    return None
