"""Generators of `.tn` programs for the verifier's scaling tests and benchmarks
(bench/verify_speed.py, bench/check_speed.py import them too)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def attn_only(layers: int, *, drop: int | None = None) -> str:
    """The attention-only transformer of examples/attn_only_2l.tn with `layers` layers,
    and `check paths`: the logits are the sum of the direct path and each layer's heads'
    output read by the unembedding (the full path expansion). With `drop`, that layer's
    term is missing and the check is false."""
    text = (ROOT / "examples" / "attn_only_2l.tn").read_text()
    lines = [text[:text.index("resid0[p, m]")],
             "resid0[p, m] = tokens[p, v] * embed.W_E[v, m] + pos_embed.W_pos[p, m]"]
    for layer in range(layers):
        lines.append(f"resid{layer + 1}[p, m] = resid{layer}[p, m] + "
                     f"Attention(resid{layer}) as blocks.{layer}.attn")
    lines.append(f"logits[p, v] = resid{layers}[p, m] * unembed.W_U[m, v]")
    paths = ["resid0[p, m] * unembed.W_U[m, v]"] + \
        [f"blocks.{layer}.attn.out[p, m] * unembed.W_U[m, v]" for layer in range(layers)
         if layer != drop]
    lines.append(f"check paths: logits[p, v] == {' + '.join(paths)}")
    return "\n".join(lines) + "\n"


def long_loop(statements: int) -> str:
    """A `for` loop of `statements` one-line statements, each reading the last."""
    return ("dim N = 4\nparam W[i: N, j: N]\ninput x[i: N]\nacc[i] = x[i]\n"
            f"for l in 0..{statements} {{\n    acc[i] = acc[j] * W[j, i]\n}}\n")


RING_PRODUCT = "A[a, x, b] * B[b, y, c] * C[c, x, d] * D[d, y, e] * E[e, z, f] * F[f, z, a]"


def ring_of_six(bond: int, phys: int) -> str:
    """A closed ring of six order-3 params (bond legs around, a physical leg each, shared
    in pairs) and `total[]`, its full contraction: no bottleneck, so the largest
    intermediate of any order grows with the bond size (slicing's test network)."""
    params = "".join(f"param {t}[{l}: Bond, {p}: Phys, {r}: Bond]\n" for t, l, p, r in
                     zip("ABCDEF", "abcdef", "xyxyzz", "bcdefa"))
    return f"dim Bond = {bond}\ndim Phys = {phys}\n{params}total[] = {RING_PRODUCT}\n"
