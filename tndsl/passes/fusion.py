"""The optional rewrites of code generation, by name: what `fuse=` and `--no-fuse` take.

Each is a pure function of a scope's planned items (equations in computation order,
plus calls of child modules, which the passes leave alone), or for `layout` of the
weight merges the lowering planned; see docs/compiling.md.
"""
from __future__ import annotations

from typing import Iterable

from tndsl.lang.errors import TnError, did_you_mean

PASSES = {
    "attention": "softmax attention -> F.scaled_dot_product_attention (explicit path "
                 "kept for when a hook reads the scores or pattern)",
    "experts": "a mixture of experts gated by `topk` -> each expert run on the tokens "
               "routed to it (index_add_), not on every token",
    "layer_norm": "layernorm/rmsnorm times a weight (or 1 + w) plus a bias -> F.layer_norm / "
                  "F.rms_norm",
    "layout": "store a param whose legs a GEMM merges in another order with the strides "
              "of that order, so the merge is a view, not a per-call copy",
    "liveness": "drop each intermediate after its last use (`del`)",
    "projections": "projections of one activation by several params (Q/K/V, gate/in) -> "
                   "one GEMM with the packed weight, split into views (opt-in)",
}

# Passes a plain `fuse=True` leaves out. `projections` keeps a packed copy of the weights
# it fuses (about the size of those weights: Q/K/V and gate/in are most of a Llama
# layer) and measured within noise of three GEMMs on CPU, where a per-call pack costs
# more than it saves; it is there for where one GEMM pays (see docs/compiling.md).
OPT_IN = frozenset({"projections"})


def resolve(fuse: Iterable[str] | bool | None = True, no_fuse: Iterable[str] = ()
            ) -> frozenset[str]:
    """The passes to run: `fuse` is True (the defaults: all but `OPT_IN`), "all" (every
    one), False/None (none) or names; `no_fuse` names passes to leave out. Unknown names
    are errors listing the valid ones."""
    if fuse is True:
        chosen = set(PASSES) - OPT_IN
    elif fuse == "all":
        chosen = set(PASSES)
    elif not fuse:
        chosen = set()
    else:
        chosen = set(_known(fuse))
    return frozenset(chosen - set(_known(no_fuse)))


def _known(names: Iterable[str]) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if name not in PASSES:
            hint = did_you_mean(name, PASSES) or ""
            raise TnError(f"unknown fusion pass `{name}`",
                          hint=(hint + " " if hint else "") + "valid: " + ", ".join(PASSES))
    return names


def uses(items) -> dict[str, int]:
    """How many times each name is read by the items."""
    from tndsl.lang import ir
    counts: dict[str, int] = {}
    for item in items:
        reads = [r.name for r in ir.refs(item.rhs)] if isinstance(item, ir.Equation) \
            else list(getattr(item, "reads", ()))
        for name in reads:
            counts[name] = counts.get(name, 0) + 1
    return counts
