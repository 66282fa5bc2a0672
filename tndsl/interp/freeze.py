"""Frozen norms: each layernorm / rmsnorm box made linear in its input.

A norm divides its input by a per-position scale computed from the input itself, so it
is a box and path expansion stops at it (`tndsl paths gpt2_small.tn logits` is one
`direct` term). Elhage et al. and TransformerLens's `apply_ln_to_stack` freeze that scale
at its value on the data being analysed; the norm is then a linear map:

    rmsnorm[m](x[p, m])    →  frozen_scale[p] * x[p, m]
    layernorm[m](x[p, m])  →  frozen_scale[p] * x[p, m]
                              - frozen_scale[p] * x[p, m_] * ones[m_] * ones[m] / Model

`freeze_norms(program)` rewrites the program's source so: each block with a norm gets a
param `frozen_scale[p: ...]` (one per instance: `blocks.3.ln1.frozen_scale`), and every
norm box is replaced as above (the mean subtracted for layernorm). Path expansion then
runs through every norm, and `tndsl.interp.attribution.attribute` fills each scale from
the model's run (`FrozenNorm.scale`), where the frozen program equals the model exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

from tndsl.lang import ir
from tndsl.lang.errors import TnError

NORMS = ("layernorm", "rmsnorm")
DEFAULT_EPS = 1e-5
LOCAL = "frozen_scale"


@dataclass(frozen=True)
class FrozenNorm:
    """One instance's frozen norm: the param holding its scale, and how the model's run
    gives the scale (`function` of `argument` over `axes`, with `eps`)."""

    param: str
    function: str
    argument: str
    axes: tuple[int, ...]          # the normalised legs, among the argument's
    eps: float
    legs: int                      # how many legs the argument has

    def scale(self, x):
        """The scale on a batch: x is the argument's value [batch..., legs...]; the result
        drops the normalised legs. 1/sqrt(var + eps) for layernorm, 1/sqrt(mean(x²) +
        eps) for rmsnorm, in x's dtype."""
        import torch
        axes = tuple(a - self.legs for a in self.axes)
        spread = x.var(dim=axes, unbiased=False) if self.function == "layernorm" \
            else x.pow(2).mean(dim=axes)
        return torch.rsqrt(spread + self.eps)


def boxes(node):
    """Every box in an expression, outermost first."""
    if isinstance(node, ir.Box):
        yield node
        yield from boxes(node.argument)
    elif isinstance(node, ir.Mask):
        yield from boxes(node.argument)
    elif isinstance(node, ir.Sum):
        for t in node.terms:
            yield from boxes(t)
    elif isinstance(node, ir.Term):
        for f in node.factors:
            yield from boxes(f)


def freeze_norms(program):
    """`(frozen program, FrozenNorm per instance)`; the program unchanged and () when it
    has no norm. A norm of anything but one tensor (`layernorm[m](a[p, m] + b[p, m])`)
    is refused with a located error."""
    from tndsl.program import parse
    network = program.network
    source = network.source
    if source is None:
        raise TnError("freezing norms rewrites the source text, and this program has none")
    text = source.text
    # One rewrite per box in the text (instances of a block share their text).
    sites: dict[tuple[int, int], dict] = {}
    frozen_by_site: list[tuple[tuple[int, int], ir.Equation, ir.Box]] = []
    for eq in network.equations:
        for box in boxes(eq.rhs):
            if box.function not in NORMS:
                continue
            key = (box.span.start, box.span.end)
            arg = box.argument.terms[0] if len(box.argument.terms) == 1 else None
            if arg is None or len(arg.factors) != 1 or not isinstance(arg.factors[0], ir.Ref) \
                    or arg.coefficient != 1:
                raise TnError(f"cannot freeze this {box.function}: it normalises a sum or a "
                              "product; freezing needs the norm of one tensor "
                              f"(`{box.function}[m](x[p, m])`)", box.span)
            frozen_by_site.append((key, eq, box))
            if key not in sites:
                sites[key] = {"eq": eq, "box": box, "ref": arg.factors[0]}
    if not sites:
        return program, ()
    # Local param names: one per site, unique within the enclosing block (or file).
    def scope(eq):
        blocks = {inst.path: inst.block for inst in network.instances}
        return blocks.get(eq.instance, "") if eq.instance else ""
    counts: dict[str, int] = {}
    for key in sorted(sites):
        site = sites[key]
        k = counts[scope(site["eq"])] = counts.get(scope(site["eq"]), 0) + 1
        local = LOCAL if k == 1 else f"{LOCAL}{k}"
        site["local"] = local if site["eq"].instance else f"{site['eq'].name}.{local}"
    edits = []
    declared_at: dict[int, list[str]] = {}
    for key, site in sites.items():
        eq, box, ref = site["eq"], site["box"], site["ref"]
        dims = {leg.name: leg.dim for leg in eq.index_dims or ()}
        local_ref = text[box.argument.span.start:box.argument.span.end].split("[")[0].strip()
        positions = [i for i in ref.indices if i not in box.legs]
        scale = f"{site['local']}[{', '.join(positions)}]"
        x = f"{local_ref}[{', '.join(ref.indices)}]"
        if box.function == "rmsnorm":
            replacement = f"({scale} * {x})"
        else:
            taken = set(dims)
            fresh = {}
            for leg in box.legs:
                name = f"{leg}_"
                while name in taken:
                    name += "_"
                fresh[leg] = name
                taken.add(name)
            shifted = f"{local_ref}[{', '.join(fresh.get(i, i) for i in ref.indices)}]"
            ones = " * ".join(f"ones[{fresh[leg]}] * ones[{leg}]" for leg in box.legs)
            divide = "".join(f" / {dims[leg]}" for leg in box.legs)
            replacement = f"({scale} * {x} - {scale} * {shifted} * {ones}{divide})"
        edits.append((box.span.start, box.span.end, replacement))
        line = text.rfind("\n", 0, eq.span.start) + 1
        indent = text[line:eq.span.start] if not text[line:eq.span.start].strip() else ""
        legs = ", ".join(f"{i}: {dims[i]}" for i in positions)
        declared_at.setdefault(line, []).append(
            f"{indent}param {site['local']}[{legs}] init ones   # frozen norm scale "
            "(tndsl.interp.freeze)\n")
    for line, decls in declared_at.items():
        edits.append((line, line, "".join(sorted(decls))))
    for start, end, new in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        text = text[:start] + new + text[end:]
    frozen = program.reparse(_given(program), text, f"{source.name} (norms frozen)")
    norms = []
    seen = set()
    for key, eq, box in frozen_by_site:
        site = sites[key]
        param = f"{eq.instance}.{site['local']}" if eq.instance else site["local"]
        if param in seen:
            continue
        seen.add(param)
        ref = box.argument.terms[0].factors[0]
        norms.append(FrozenNorm(param, box.function, ref.name,
                                tuple(ref.indices.index(i) for i in box.legs),
                                box.eps if box.eps is not None else DEFAULT_EPS,
                                len(ref.indices)))
    return frozen, tuple(norms)


def _given(program) -> dict[str, int]:
    """The sizes of the dims not derived from others: given again, they reproduce it."""
    return {d.name: int(program.sizes[d.name]) for d in program.network.dims
            if program.sizes.get(d.name) is not None
            and (d.size is None or not d.size.free_symbols)}


__all__ = ["FrozenNorm", "freeze_norms"]
