"""The interpretability workbench on the induction model of `tndsl study induction`
(docs/tutorial.md, section 12): find the induction heads by activation patching,
confirm them by path patching of the K-composition path, compare with attribution
patching. Run from the repository root:

    python examples/workbench.py [--plots DIR]

It prints every number the tutorial quotes (and, with --plots, writes the figures).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tndsl.interp import patching, plots
from tndsl.interp.hooks import run_with_cache
from tndsl.interp.induction import load_saved
from tndsl.interp.paths import expand_paths

ROOT = Path(__file__).resolve().parent
WEIGHTS = ROOT / "induction" / "report" / "weights.safetensors"


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    rank = lambda t: t.flatten().argsort().argsort().double()
    return pearson(rank(a), rank(b))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plots", metavar="DIR", help="write the figures there")
    args = parser.parse_args(argv)

    config, model, program, _ = load_saved(WEIGHTS)
    model = model.double()
    half = config.context // 2
    generator = torch.Generator().manual_seed(1)
    first = torch.randint(0, config.vocab, (16, half), generator=generator)
    clean = torch.cat([first, first], dim=-1)               # repeated: induction works
    fresh = torch.randint(0, config.vocab, (16, half), generator=generator)
    corrupted = torch.cat([fresh, first], dim=-1)           # same second half, no repeat
    targets = clean[:, half + 1:]

    def metric(logits: torch.Tensor) -> torch.Tensor:
        """Mean logit of the clean next token over the repeated half."""
        picked = logits[..., half:-1, :].gather(-1, targets[..., None])[..., 0]
        return picked.mean()

    # 1. Activation patching: each head's output, clean into the corrupted run.
    heads = patching.activation_patching(model, clean, corrupted, metric,
                                         "blocks.*.attn.head_out", over="Heads")
    # 2. Attribution patching: the same, to first order, in one forward and backward.
    estimate = patching.attribution_patching(model, clean, corrupted, metric,
                                             "blocks.*.attn.head_out", over="Heads")
    # 3. Path patching of the K-composition path: on the clean run, corrupt only what
    #    layer 0 writes into layer 1's keys (side s of the score), then only its queries.
    scores = expand_paths(program, "blocks.1.attn.scores")
    with torch.no_grad():
        clean_metric = float(metric(model(clean)))
    k_side = float(metric(patching.path_patching(model, clean, corrupted, scores,
                                                 "blocks.0.attn", side="s")))
    q_side = float(metric(patching.path_patching(model, clean, corrupted, scores,
                                                 "blocks.0.attn", side="p")))
    # 4. Edge attribution of the score's paths, per layer-0 head.
    edges = patching.edge_attribution(model, clean, corrupted, metric, scores)
    k_comp = edges["p: direct, s: blocks.0.attn"]

    result = {
        "clean": heads.clean, "corrupted": heads.corrupted,
        "activation": heads.values, "attribution": estimate.values,
        "pearson": pearson(heads.values, estimate.values),
        "spearman": spearman(heads.values, estimate.values),
        "k_side": k_side, "q_side": q_side, "clean_metric": clean_metric,
        "k_comp_edges": k_comp.sum(0) if k_comp.dim() > 1 else k_comp,
    }
    print(f"metric: clean {heads.clean:.3f}, corrupted {heads.corrupted:.3f}")
    print("activation patching, heads (normalized):")
    print(heads.normalized().numpy().round(3))
    print("attribution patching (normalized):")
    print(estimate.normalized().numpy().round(3))
    print(f"correlation over the 8 heads: Pearson {result['pearson']:.3f}, "
          f"Spearman {result['spearman']:.3f}")
    print(f"path patching from the clean run ({clean_metric:.3f}): K side of layer 1 "
          f"corrupted {k_side:.3f}, Q side {q_side:.3f}")
    print("edge attribution of the K-composition path per layer-0 head:",
          [round(float(v), 3) for v in result["k_comp_edges"]])
    if args.plots:
        out = Path(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        heads.plot("activation patching: head outputs", normalized=True).savefig(
            out / "workbench_heads.png", dpi=120)
        estimate.plot("attribution patching: head outputs", normalized=True).savefig(
            out / "workbench_attribution.png", dpi=120)
        plots.path_bars(edges, title="edge attribution: paths of blocks.1.attn.scores"
                        ).savefig(out / "workbench_edges.png", dpi=120)
        _, cache = run_with_cache(model, clean[:1], names="blocks.1.attn.pattern")
        plots.pattern_plot(cache["blocks.1.attn.pattern"][0], title="layer 1 patterns"
                           ).savefig(out / "workbench_patterns.png", dpi=120)
    return result


if __name__ == "__main__":
    main()
