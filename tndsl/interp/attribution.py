"""Path attribution on data: how much each path of an expansion contributes.

Given a compiled model, its inputs and a `PathExpansion` (`tndsl.interp.paths`), every path
term is evaluated on the batch from the model's own cached activations — the attention
patterns and the embedding the terms hold as given tensors are read through
`tndsl.interp.hooks.run_with_cache`, the weights from the model — so no term is re-derived by
hand. The terms, summed over their open head legs, add up to the model's value of the
expanded equation (exactly in exact arithmetic; within 1e-10 for a float64 model):

    expansion = expand_paths(program, "blocks.1.attn.scores")
    result = attribute(model.double(), expansion, tokens)
    result.largest_error                     # |Σ paths − value|, max over entries
    print(result.render({"stripe": lambda v: v[:, 1, 16:, 1:17].diagonal(dim1=-2, dim2=-1)}))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from tndsl.lang import ir
from tndsl.lang.errors import TnError
from tndsl.interp.hooks import run_with_cache
from tndsl.interp.terms import Terms, legs_of, lengths_of

Region = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Attribution:
    """Each path's value on a batch: `values[label]` is [batch..., legs..., head legs...]."""

    name: str
    legs: tuple[str, ...]
    value: torch.Tensor                    # the model's value of `name`: [batch..., legs...]
    values: Mapping[str, torch.Tensor]     # by path label
    heads: Mapping[str, tuple[str, ...]]   # each path's head legs (their instances)

    def contribution(self, label: str) -> torch.Tensor:
        """A path's value summed over its head legs: the same shape as `value`."""
        value = self.values[label]
        extra = len(self.heads[label])
        return value.sum(dim=tuple(range(-extra, 0))) if extra else value

    @property
    def total(self) -> torch.Tensor:
        """The sum of every path's contribution."""
        return sum(self.contribution(label) for label in self.values)

    @property
    def largest_error(self) -> float:
        return float((self.total - self.value).abs().max())

    def mean(self, label: str, region: Region | None = None) -> float:
        """The mean of a path's contribution, over every entry or over `region(value)`."""
        value = self.contribution(label)
        return float((region(value) if region else value).mean())

    def per_head(self, label: str, region: Region | None = None) -> torch.Tensor:
        """The mean of a path's value for each combination of its heads: [heads...]
        (a scalar for a path through no heads)."""
        value = self.values[label]
        extra = len(self.heads[label])
        if not extra:
            return torch.tensor(self.mean(label, region), dtype=torch.float64)
        flat = value.reshape(*value.shape[:-extra], -1)
        means = [(region(flat[..., k]) if region else flat[..., k]).mean()
                 for k in range(flat.shape[-1])]
        return torch.stack(means).reshape(value.shape[-extra:])

    def table(self, regions: Mapping[str, Region] | None = None) -> list[dict]:
        """One row per path: its label, mean, and mean on each named region; then the sum
        of the paths and the value itself."""
        regions = dict(regions or {})
        rows = [{"path": label, "mean": self.mean(label),
                 **{name: self.mean(label, region) for name, region in regions.items()}}
                for label in self.values]
        total = self.total
        rows.append({"path": "sum of paths", "mean": float(total.mean()),
                     **{name: float(region(total).mean()) for name, region in regions.items()}})
        rows.append({"path": f"{self.name} (the model's value)", "mean": float(self.value.mean()),
                     **{name: float(region(self.value).mean())
                        for name, region in regions.items()}})
        return rows

    def render(self, regions: Mapping[str, Region] | None = None) -> str:
        """The table as Markdown."""
        rows = self.table(regions)
        columns = [c for c in rows[0] if c != "path"]
        lines = ["| path | " + " | ".join(columns) + " |",
                 "| --- |" + " ---: |" * len(columns)]
        for row in rows:
            lines.append(f"| {row['path']} | " + " | ".join(f"{row[c]:+.4f}" for c in columns)
                         + " |")
        lines.append(f"\nLargest difference between the sum of the paths and the value: "
                     f"{self.largest_error:.1e}")
        return "\n".join(lines)


def attribute(model: torch.nn.Module, expansion, *args, inputs: Mapping[str, torch.Tensor]
              | None = None, **kwargs) -> Attribution:
    """Evaluate every path of `expansion` on the batch `model(*args, **kwargs)` runs, from
    its cached activations and weights, in float64. `inputs` gives input tensors by name
    where a path holds one (an embedding not kept whole). Runs the model once."""
    program = expansion.program()
    tensors = {t.name: t for t in program.network.tensors}
    equations = [program.equation(term.name) for term in expansion.terms]
    needed = {expansion.name} | {norm.argument for norm in expansion.frozen}
    for eq in equations:
        for ref in ir.refs(eq.rhs):
            if ref.name != ir.ONES and ref.name not in tensors:
                needed.add(ref.name)
    with torch.no_grad():
        _, cache = run_with_cache(model, *args, names=sorted(needed), **kwargs)
    weights = {name: p.detach() for name, p in model.named_parameters()}
    value = cache[expansion.name].double()
    batch = value.dim() - len(expansion.indices)
    if batch < 0:
        raise TnError(f"`{expansion.name}` has {value.dim()} dims in the model, fewer than "
                      f"its {len(expansion.indices)} legs")
    # Frozen norms (expand_paths(..., freeze=["norms"])): each scale from this run.
    scales = {norm.param: norm.scale(cache[norm.argument].double())
              for norm in expansion.frozen}
    terms = Terms(program, cache, weights, inputs, batch_shape=tuple(value.shape[:batch]),
                  override=scales, lengths=lengths_of(program, expansion.name, value))

    values, heads = {}, {}
    for term, eq in zip(expansion.terms, equations):
        values[term.label] = terms.sum(eq.rhs, eq.indices, legs_of(eq))
        heads[term.label] = tuple(h.instance for h in term.heads)
    return Attribution(expansion.name, expansion.indices, value, values, heads)
