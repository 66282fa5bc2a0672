"""Plots of the workbench's results, with matplotlib (the `plots` extra).

Each function returns a `matplotlib.figure.Figure` (built without pyplot, so nothing is
shown or kept globally): `fig.savefig("sweep.png")`, or display it in a notebook.

- `sweep_heatmap(sweep)`: an activation or attribution patching sweep, hook points ×
  the leg swept (positions, heads), on a diverging scale centred at 0;
- `pattern_plot(pattern)`: attention patterns, one panel per head, query × key;
- `path_bars(values)`: path attributions as horizontal bars (an `Attribution`, or the
  dict `edge_attribution` returns).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from tndsl.lang.errors import TnError


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - the extra is installed with the tests
        raise TnError("plots need matplotlib", hint="pip install 'tndsl[plots]'") from None
    return Figure(figsize=(width, height), layout="constrained")




def sweep_heatmap(sweep, *, title: str | None = None, normalized: bool = False,
                  cmap: str = "RdBu"):
    """A heatmap of a `tndsl.interp.patching.Sweep`: one row per hook point, one column
    per entry of the leg swept (a bar chart where nothing was swept). `normalized`
    plots (value − corrupted) / (clean − corrupted)."""
    values = (sweep.normalized() if normalized else sweep.values).double()
    if values.dim() > 2:
        raise TnError(f"a heatmap shows one swept leg, this sweep has {values.dim() - 1} "
                      f"({', '.join(sweep.legs)})", hint="index or sum the extra legs first")
    heading = title or f"{sweep.kind}" + (f" over {', '.join(sweep.legs)}" if sweep.legs
                                          else "")
    if values.dim() == 1:
        fig = _figure(6, 0.35 * len(sweep.points) + 1.2)
        ax = fig.add_subplot()
        ax.barh(range(len(sweep.points)), values.tolist())
        ax.set_yticks(range(len(sweep.points)), [p for p in sweep.points])
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.5)
        ax.set_xlabel("normalized metric" if normalized else "metric")
        ax.set_title(heading)
        return fig
    rows, columns = values.shape
    fig = _figure(min(2 + 0.45 * columns, 16), min(1.2 + 0.4 * rows, 12))
    ax = fig.add_subplot()
    bound = float(values.abs().max()) or 1.0
    if not normalized:  # centre the colours on the corrupted run's metric
        centre = sweep.corrupted
        bound = float((values - centre).abs().max()) or 1.0
        image = ax.imshow(values.numpy(), cmap=cmap, vmin=centre - bound, vmax=centre + bound,
                          aspect="auto")
    else:
        image = ax.imshow(values.numpy(), cmap=cmap, vmin=-bound, vmax=bound, aspect="auto")
    ax.set_yticks(range(rows), [p for p in sweep.points])
    ax.set_xticks(range(columns))
    ax.set_xlabel(sweep.legs[0])
    ax.set_title(heading)
    fig.colorbar(image, ax=ax, label="normalized metric" if normalized else "metric")
    return fig


def pattern_plot(pattern: torch.Tensor, *, heads: Sequence[int] | None = None,
                 tokens: Sequence[str] | None = None, title: str | None = None):
    """Attention patterns `[head, query, key]` (one batch entry: index it first), one
    panel per head (or those in `heads`), with token labels on the axes if given."""
    pattern = pattern.detach().double().cpu()
    if pattern.dim() == 2:
        pattern = pattern[None]
    if pattern.dim() != 3:
        raise TnError(f"a pattern plot takes [head, query, key], got {tuple(pattern.shape)}",
                      hint="index the batch first: cache['blocks.0.attn.pattern'][0]")
    chosen = list(range(pattern.shape[0])) if heads is None else list(heads)
    columns = min(len(chosen), 4)
    rows = (len(chosen) + columns - 1) // columns
    fig = _figure(3.2 * columns + 0.8, 3.0 * rows + 0.6)
    axes = fig.subplots(rows, columns, squeeze=False)
    for k, head in enumerate(chosen):
        ax = axes[k // columns][k % columns]
        image = ax.imshow(pattern[head].numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"head {head}")
        if tokens is not None:
            ax.set_xticks(range(len(tokens)), list(tokens), rotation=90, fontsize=6)
            ax.set_yticks(range(len(tokens)), list(tokens), fontsize=6)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    for k in range(len(chosen), rows * columns):
        axes[k // columns][k % columns].axis("off")
    fig.colorbar(image, ax=axes, shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def path_bars(values, *, region=None, title: str | None = None, top: int | None = None):
    """Path attributions as horizontal bars, largest magnitude first: an
    `Attribution` (each path's mean contribution, on `region` if given) or a mapping
    label → value (a tensor is summed: `edge_attribution`'s per-head scores)."""
    if isinstance(values, Mapping):
        items = [(label, float(torch.as_tensor(v).sum())) for label, v in values.items()]
    else:
        items = [(label, values.mean(label, region)) for label in values.values]
    items.sort(key=lambda item: -abs(item[1]))
    if top is not None:
        items = items[:top]
    fig = _figure(7, 0.35 * len(items) + 1.2)
    ax = fig.add_subplot()
    ax.barh(range(len(items)), [v for _, v in items],
            color=["tab:blue" if v >= 0 else "tab:red" for _, v in items])
    ax.set_yticks(range(len(items)), [label for label, _ in items], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_title(title or "path attribution")
    return fig


__all__ = ["path_bars", "pattern_plot", "sweep_heatmap"]
