"""Patching: activation patching sweeps, path patching from a path expansion, and
attribution patching, on any compiled `.tn` model.

Each compares a clean and a corrupted input and a `metric` of the output (a scalar
tensor). Hook points are chosen by name, glob or callable (`tndsl.interp.hooks.select`);
which entries to patch one at a time by the legs of the hook point (`over="p"`, or a dim
name: `over="Heads"`), read from the program, so no family needs its own code:

    resid = activation_patching(model, clean, corrupt, metric, "blocks.*.resid_pre", over="p")
    heads = activation_patching(model, clean, corrupt, metric, "blocks.*.attn.z", over="Heads")
    heads.plot()                                    # a heatmap (tndsl.interp.plots)
    approx = attribution_patching(model, clean, corrupt, metric, "blocks.*.attn.z", over="Heads")

`path_patching` patches one term of a `tndsl paths` expansion: the value of the expanded
equation becomes the clean one plus, for each path whose read on `side` passes `sender`,
the change of that path when the sender's factors (its pattern and input: everything the
path holds inside the sender) take their corrupted values. It is exact by construction:
the terms sum to the equation. `edge_attribution` scores every term of an expansion by
gradient × difference, in one forward and backward per input pair.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from tndsl.lang import ir
from tndsl.lang.errors import TnError
from tndsl.interp.hooks import Names, intervene, point_legs, run_with_cache, select
from tndsl.interp.terms import Terms, legs_of, lengths_of

Metric = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Sweep:
    """A patching result: `values[k, i...]` is the metric (or its estimate) with entry
    `i...` (over legs `legs`) of hook point `points[k]` patched. `clean` and `corrupted`
    are the metric of the unpatched runs."""

    values: torch.Tensor
    points: tuple[str, ...]
    legs: tuple[str, ...]
    clean: float
    corrupted: float
    kind: str = "activation patching"

    def plot(self, title: str | None = None, **options):
        """A heatmap (points × the first leg swept), returned as a matplotlib figure."""
        from tndsl.interp.plots import sweep_heatmap
        return sweep_heatmap(self, title=title, **options)

    def normalized(self) -> torch.Tensor:
        """(value - corrupted) / (clean - corrupted): 1 where patching restores the clean
        metric, 0 where it changes nothing."""
        return (self.values - self.corrupted) / (self.clean - self.corrupted)


def _legs(model, name: str) -> tuple[tuple[str, str], ...]:
    program = getattr(model, "tndsl_program", None)
    if program is None:
        raise TnError("patching needs the model's program to know the legs of its hook points",
                      hint="build the model with Program.module() or tndsl.from_pretrained")
    legs = point_legs(model, name)
    if legs is None:
        raise TnError(f"`{name}` is not an equation of the program")
    return legs


def _axes(model, name: str, over: Sequence[str]) -> tuple[int, ...]:
    """Positions, among `name`'s legs, of the legs `over` names (by leg or dim name)."""
    legs = _legs(model, name)
    axes = []
    for want in over:
        found = [k for k, (leg, dim) in enumerate(legs) if want in (leg, dim)]
        if not found:
            raise TnError(f"`{name}` has no leg `{want}`", hint=f"its legs: " + ", ".join(
                f"{leg}: {dim}" for leg, dim in legs))
        axes.append(found[0])
    return tuple(axes)


def _over(over) -> tuple[str, ...]:
    return (over,) if isinstance(over, str) else tuple(over or ())


def _metric(metric: Metric, output: torch.Tensor) -> float:
    value = metric(output)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise TnError("the metric must return a scalar tensor")
    return float(value)


def activation_patching(model, clean: torch.Tensor, corrupted: torch.Tensor, metric: Metric,
                        names: Names, over: str | Sequence[str] = (), *,
                        batch_size: int = 32) -> Sweep:
    """Run `corrupted` with one entry (over legs `over`; the whole activation when
    empty) of one hook point at a time replaced by its value on `clean`, and record
    `metric(output)`: `values[point, entries...]`. The runs are batched (`batch_size`
    patched copies per forward, stacked on a new leading dim)."""
    over = _over(over)
    points = select(model, names)
    _, cache = run_with_cache(model, clean, names=points)
    axes = {name: _axes(model, name, over) for name in points}
    n_legs = {name: len(_legs(model, name)) for name in points}
    sizes = None
    variants = []
    for name in points:
        value = cache[name]
        shape = tuple(value.shape[value.dim() - n_legs[name] + a] for a in axes[name])
        if sizes is not None and shape != sizes:
            raise TnError(f"`{name}` has {shape} entries over {', '.join(over)}, the others "
                          f"{sizes}: sweep them separately")
        sizes = shape
        for index in itertools.product(*[range(s) for s in shape]):
            variants.append((name, index))
    with torch.no_grad():
        clean_metric = _metric(metric, model(clean))
        corrupted_metric = _metric(metric, model(corrupted))
    results = []
    for start in range(0, len(variants), batch_size):
        chunk = variants[start:start + batch_size]

        def patch(value: torch.Tensor, hook, chunk=chunk):
            mine = [(j, index) for j, (name, index) in enumerate(chunk) if name == hook.name]
            if not mine:
                return None
            value = value.clone()
            source = cache[hook.name]
            lead = source.dim() - n_legs[hook.name]
            for j, index in mine:
                where = [slice(None)] * source.dim()
                for axis, i in zip(axes[hook.name], index):
                    where[lead + axis] = i
                value[(j, *where)] = source[tuple(where)]
            return value
        stacked = corrupted.expand(len(chunk), *corrupted.shape)
        touched = sorted({name for name, _ in chunk})
        with torch.no_grad():
            output = _run(model, stacked, [(touched, patch)])
        results.extend(_metric(metric, output[j]) for j in range(len(chunk)))
    values = torch.tensor(results, dtype=torch.float64).reshape((len(points),) + sizes)
    return Sweep(values, tuple(points), over, clean_metric, corrupted_metric)


def _run(model, args, hooks):
    with intervene(model, hooks):
        return model(args)


def attribution_patching(model, clean: torch.Tensor, corrupted: torch.Tensor,
                         metric: Metric, names: Names, over: str | Sequence[str] = ()
                         ) -> Sweep:
    """The first-order estimate of `activation_patching`: for each entry, the metric of
    the corrupted run plus Σ (clean − corrupted activation) · d metric / d activation
    (taken on the corrupted run), summed over the legs not swept and the batch. One
    forward on each input and one backward in all. Exact where the metric is linear in
    the activation."""
    over = _over(over)
    points = select(model, names)
    _, clean_cache = run_with_cache(model, clean, names=points)
    output, corrupted_cache = run_with_cache(model, corrupted, names=points, grads=True,
                                             metric=metric)
    with torch.no_grad():
        clean_metric = _metric(metric, model(clean))
    corrupted_metric = _metric(metric, output)
    rows = []
    for name in points:
        n = len(_legs(model, name))
        value = corrupted_cache[name]
        lead = value.dim() - n
        keep = {lead + a for a in _axes(model, name, over)}
        grad = corrupted_cache.grads.get(name)
        if grad is None:
            grad = torch.zeros_like(value)
        product = ((clean_cache[name].double() - value.double()) * grad.double())
        reduce = tuple(d for d in range(product.dim()) if d not in keep)
        estimate = product.sum(dim=reduce) if reduce else product
        order = [sorted(keep).index(lead + a) for a in _axes(model, name, over)]
        rows.append(estimate.permute(order) + corrupted_metric if order else
                    estimate + corrupted_metric)
    return Sweep(torch.stack(rows), tuple(points), over, clean_metric, corrupted_metric,
                 kind="attribution patching")


# ---- paths -------------------------------------------------------------------------------

def _needed(expansion):
    """The program of the expansion's source and the hook points its terms read."""
    program = expansion.program()
    tensors = {t.name for t in program.network.tensors}
    needed = {expansion.name}
    for term in expansion.terms:
        for ref in ir.refs(program.equation(term.name).rhs):
            if ref.name != ir.ONES and ref.name not in tensors:
                needed.add(ref.name)
    return program, sorted(needed)


def path_patching(model, clean: torch.Tensor, corrupted: torch.Tensor, expansion, sender: str,
                  side: str | None = None, *, inputs=None, inputs_corrupted=None
                  ) -> torch.Tensor:
    """The model's output on `clean` with the value of `expansion.name` changed as if
    `sender` had run on `corrupted`, along the paths whose read on `side` (any side when
    None) passes `sender` only; everything else (other paths, the other side of a score,
    every later layer) stays clean. `sender` is a block instance of the expansion
    (`blocks.0.attn`); on a score, `side="s"` is the key side."""
    if sender not in expansion.through:
        raise TnError(f"`{sender}` is not an instance the expansion runs through",
                      hint="instances: " + ", ".join(expansion.through))
    program, needed = _needed(expansion)
    _, clean_cache = run_with_cache(model, clean, names=needed)
    _, corrupted_cache = run_with_cache(model, corrupted, names=needed)
    value = clean_cache[expansion.name]
    batch = tuple(value.shape[:value.dim() - len(expansion.indices)])
    weights = dict(model.named_parameters())
    lengths = lengths_of(program, expansion.name, value)
    base = Terms(program, clean_cache, weights, inputs, batch_shape=batch, lengths=lengths)
    swapped = Terms(program, corrupted_cache, weights, inputs_corrupted or inputs,
                    batch_shape=batch, lengths=lengths)
    delta = torch.zeros(value.shape, dtype=torch.float64)
    chosen = 0
    for term in expansion.terms:
        if not any(r.path and sender in r.path and (side is None or r.side == side)
                   for r in term.reads):
            continue
        chosen += 1
        eq = program.equation(term.name)
        dims = legs_of(eq)
        for product, owners in zip(eq.rhs.terms, term.owners):
            if len(owners) != len(product.factors):
                raise TnError("internal: a path term's factors do not match its owners")
            flags = [owner[1] == sender and (side is None or owner[0] == side)
                     for owner in owners]

            def operand(name, indices, dims, _flags=iter(flags)):
                use = next(_flags)
                return (swapped if use else base).operand(name, indices, dims)
            patched = base.term(product, expansion.indices, dims, operand)
            original = base.term(product, expansion.indices, dims)
            delta = delta + (patched - original)
    if not chosen:
        raise TnError(f"no path of `{expansion.name}` reads `{sender}`"
                      + (f" on side `{side}`" if side else ""),
                      hint="paths: " + ", ".join(t.label for t in expansion.terms))
    change = delta.to(value.dtype)

    def patch(activation):
        return activation + change.to(activation.device)
    with torch.no_grad():
        return _run(model, clean, [(expansion.name, patch)])


def edge_attribution(model, clean: torch.Tensor, corrupted: torch.Tensor, metric: Metric,
                     expansion, *, inputs=None, inputs_corrupted=None) -> dict[str, torch.Tensor]:
    """Attribution patching of the edges of a path expansion: for each term (path
    label), Σ (term on clean − term on corrupted) · d metric / d value, the gradient of
    the metric with respect to the expanded equation on the corrupted run, summed over
    the batch and the equation's legs and kept per head (the term's open head legs).
    One forward and one backward per input pair. Where the metric is linear in the
    equation, the sum over a term's heads equals patching that term exactly."""
    program, needed = _needed(expansion)
    _, clean_cache = run_with_cache(model, clean, names=needed)
    _, corrupted_cache = run_with_cache(model, corrupted, names=needed, grads=True,
                                        metric=metric)
    value = clean_cache[expansion.name]
    batch = tuple(value.shape[:value.dim() - len(expansion.indices)])
    weights = dict(model.named_parameters())
    grad = corrupted_cache.grads[expansion.name].double()
    scores = {}
    for term in expansion.terms:
        eq = program.equation(term.name)
        dims = legs_of(eq)
        lengths = lengths_of(program, expansion.name, value)
        a = Terms(program, clean_cache, weights, inputs, batch_shape=batch,
                  lengths=lengths).sum(eq.rhs, eq.indices, dims)
        b = Terms(program, corrupted_cache, weights, inputs_corrupted or inputs,
                  batch_shape=batch, lengths=lengths).sum(eq.rhs, eq.indices, dims)
        heads = len(term.heads)
        g = grad.reshape(grad.shape + (1,) * heads)
        total = ((a - b) * g)
        scores[term.label] = total.sum(dim=tuple(range(total.dim() - heads)))
    return scores


__all__ = ["Sweep", "activation_patching", "attribution_patching", "edge_attribution",
           "path_patching"]
