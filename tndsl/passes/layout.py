"""Storage orders of params: the layout pass.

A contraction lowered to one GEMM merges a weight's legs into (in, out) or (out, in).
Where the param's declared leg order does not group them (`W_Q[h: Heads, m: Model, e:
Head]` read as Model x (Heads Head)), the merge after the permute would copy the whole
weight on every call. This pass stores such a param with its legs in the order that use
wants: the param keeps its declared shape, its `state_dict()` entry and its values, but
its strides are those of the permuted order, so the forward's `permute(...).reshape(...)`
is a view (docs/compiling.md, "Layout").

The lowering reports each weight use that merges permuted legs; this pure function
decides, for each param, the order it is stored in.
"""
from __future__ import annotations

from typing import Iterable


def storage_orders(uses: Iterable[tuple[str, tuple[int, ...]]]) -> dict[str, tuple[int, ...]]:
    """`uses`: (param, order) for each merge of a param's permuted legs, in the order the
    forward runs them; an order lists the declared legs' positions in the order the GEMM
    reads them. The first use of each param decides: most params feed one GEMM, and a
    later use with another order copies only its own reshape, as it would without this
    pass. The identity order needs no choice and is left out."""
    orders: dict[str, tuple[int, ...]] = {}
    for param, order in uses:
        if param not in orders:
            orders[param] = tuple(order)
    return {p: o for p, o in orders.items() if o != tuple(range(len(o)))}
