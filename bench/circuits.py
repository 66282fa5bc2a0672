"""The full OV circuit of a GPT-2-small-shaped head (vocab 50257, model 768, head 64,
random weights): its Frobenius norm and eigenvalues through tndsl.interp.circuits (factored)
against materialising the vocab x vocab matrix, in one run.

    python bench/circuits.py [--slice 2048]

Each side runs in a fresh subprocess so its peak memory (VmHWM) is its own. The full
matrix (10 GB in float32) does not fit comfortably here, so that side is measured on a
row slice and extrapolated: time and memory scale with the rows for the norm; the
eigendecomposition of an n x n matrix scales as n³ (timed on a slice-sized square).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

V, M, E = 50257, 768, 64


def peak_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def weights():
    import torch
    g = torch.Generator().manual_seed(0)
    return (torch.randn(V, M, generator=g) * 0.02, torch.randn(M, E, generator=g) * 0.02,
            torch.randn(E, M, generator=g) * 0.02, torch.randn(M, V, generator=g) * 0.02)


def child(mode: str, rows: int) -> None:
    import torch
    from tndsl.interp.circuits import NetworkMatrix
    w_e, w_v, w_o, w_u = weights()
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak to what is held now
        f.write("5")
    before = peak_mb()
    start = time.perf_counter()
    if mode == "factored":
        circuit = NetworkMatrix.chain(w_e, w_v, w_o, w_u)
        norm = float(circuit.frobenius_norm())
        eig = circuit.eigenvalues()
        seconds = time.perf_counter() - start
        result = {"norm": norm, "eigenvalues": len(eig), "seconds": seconds,
                  "eig_seconds": None, "peak_mb": peak_mb() - before}
    else:
        block = (w_e[:rows] @ w_v @ w_o) @ w_u       # rows x V of the full matrix
        partial = float((block ** 2).sum())
        seconds = time.perf_counter() - start
        square = block[:, :rows]
        start = time.perf_counter()
        torch.linalg.eigvals(square)
        eig_seconds = time.perf_counter() - start
        result = {"norm_partial": partial, "seconds": seconds, "eig_seconds": eig_seconds,
                  "peak_mb": peak_mb() - before}
    print(json.dumps(result))


def run(mode: str, rows: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--slice", str(rows)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slice", type=int, default=2048)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.slice)
        return
    factored = run("factored", args.slice)
    sliced = run("materialized", args.slice)
    scale = V / args.slice
    norm_seconds = sliced["seconds"] * scale
    eig_seconds = sliced["eig_seconds"] * scale ** 3
    materialized_mb = V * V * 4 / 2**20
    print(f"full OV circuit, vocab {V}, model {M}, head {E}, float32, random weights")
    print(f"{'':<34}{'factored':>12}{'materialised':>16}{'ratio':>10}")
    print(f"{'norm + eigenvalues, seconds':<34}{factored['seconds']:>12.3f}"
          f"{norm_seconds + eig_seconds:>16.0f}{(norm_seconds + eig_seconds) / factored['seconds']:>10.0f}x")
    print(f"{'  of which the norm, seconds':<34}{'':>12}{norm_seconds:>16.2f}"
          f"{norm_seconds / factored['seconds']:>10.0f}x")
    print(f"{'peak memory, MB':<34}{factored['peak_mb']:>12.0f}{materialized_mb:>16.0f}"
          f"{materialized_mb / max(factored['peak_mb'], 1):>10.0f}x")
    print(f"(materialised side extrapolated from a {args.slice}-row slice: the norm's time x "
          f"{scale:.1f}, the eigendecomposition's x {scale:.1f}³; its memory is the "
          f"{V} x {V} matrix alone; measured slice peak {sliced['peak_mb']:.0f} MB)")
    print(f"factored: norm {factored['norm']:.6g}, {factored['eigenvalues']} nonzero eigenvalues")


if __name__ == "__main__":
    main()
