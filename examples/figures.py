"""Regenerate the figure gallery in docs/figures/ (`make figures`): an SVG (text
outlined) and a PNG of each example's figure and of the hook maps, as listed in
docs/figures.md, laid out for a two-column paper's text width (6.75 in) in Times at
10 pt (smaller where a figure needs it to fit, never under 7 pt)."""
from __future__ import annotations

import sys
from pathlib import Path

import tndsl

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "docs" / "figures"
WIDTH = "6.75in"

# file stem, equation, depth (None: expand everything), dims, figure name
GALLERY = [
    ("orthodox", "dot", 0, None, "orthodox-dot"),
    ("orthodox", "outer", 0, None, "orthodox-outer"),
    ("orthodox", "matvec", 0, None, "orthodox-matvec"),
    ("orthodox", "matmul", 0, None, "orthodox-matmul"),
    ("orthodox", "trace", 0, None, "orthodox-trace"),
    ("sum", "total", 0, None, "sum"),
    ("nested_boxes", "y", 0, None, "nested-boxes"),
    ("mlp", "z", 0, None, "mlp"),
    ("attention_head", "out", None, None, "attention-head"),
    ("multihead_attention", "out", None, None, "multihead-attention"),
    ("gpt2_small", "blocks.0.out", 1, {"Layers": 1}, "gpt2-block"),
    ("attn_only_2l", "blocks.1.attn.scores", 1, None, "qk-expansion"),
    ("llama", "blocks.0.out", 1, {"Layers": 1}, "llama-block"),
    ("llama", "blocks.0.attn.scores", 1, {"Layers": 1}, "llama-scores"),
]
# Hook maps (`--hooks`), the same fields.
HOOK_MAPS = [
    ("gpt2_small", "blocks.0.out", 1, {"Layers": 1}, "hook-map"),
]


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for hooks, (stem, name, depth, dims, figure) in [(False, g) for g in GALLERY] + \
            [(True, g) for g in HOOK_MAPS]:
        program = tndsl.load(HERE / f"{stem}.tn", dims=dims)
        fig = program.render(name, expand=depth is None, depth=depth or 0, width=WIDTH,
                             hooks=hooks)
        fig.save(OUT / f"{figure}.svg")
        fig.save(OUT / f"{figure}.png", dpi=150)
        print(f"docs/figures/{figure}.svg, .png: {stem}.tn {name} "
              f"({fig.scene.width / 72:.2f} in wide, {fig.scene.font_size:g} pt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
