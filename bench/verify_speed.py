"""How long `tndsl verify` takes, against evaluating both sides once numerically at
small sizes, in one run:

- the QK-composition expansion of examples/attn_only_2l.tn;
- the full path expansion of an L-layer attention-only model, L = 2 … 6 (the work grows
  with the monomials of the boxes' arguments, 4× per layer, not with their rendered
  text): time per L and the ratio to the previous L;
- symmetric networks the canonical form must not give up on: a shuffled ring of 64 and
  of 256 identical tensors, a relabelled regular tournament on 7 vertices.

    python bench/verify_speed.py
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from timing import median_seconds

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import tndsl  # noqa: E402
from tndsl.verify import prove, prove_all  # noqa: E402
from tndsl.verify.numeric import float_sides, random_tensors, small_program  # noqa: E402
from tndsl.verify.symbolic import canonical  # noqa: E402
from networks import attn_only  # noqa: E402

EXAMPLE = ROOT / "examples" / "attn_only_2l.tn"


def qk_expansion() -> None:
    program = tndsl.load(EXAMPLE)
    (check,) = program.checks
    small = small_program(program)
    (small_check,) = small.checks
    values = random_tensors(small, torch.Generator().manual_seed(0))
    result = prove(program, check, small)
    assert result.status == "proven", result.render()
    proof = median_seconds(lambda: prove(program, check, small))
    numeric = median_seconds(lambda: float_sides(small, small_check, values))
    print(f"{'QK expansion (16 monomials a side)':<44}{'median s':>10}{'ratio':>8}")
    print(f"{'one float64 evaluation at small sizes':<44}{numeric:>10.4f}{1.0:>8.2f}")
    print(f"{'symbolic proof':<44}{proof:>10.4f}{proof / numeric:>8.2f}")


def path_expansions(largest: int = 6) -> None:
    print(f"\n{'L-layer attention-only path expansion':<44}{'s':>10}{'vs L-1':>8}")
    previous = None
    for layers in range(2, largest + 1):
        program = tndsl.parse(attn_only(layers))
        start = time.perf_counter()
        (result,) = prove_all(program)
        seconds = time.perf_counter() - start
        assert (result.status, result.tier) == ("proven", "symbolic"), result.render()
        ratio = f"{seconds / previous:>8.2f}" if previous else f"{'':>8}"
        label = f"L = {layers} ({2 ** (layers + 1)} monomials a side)"
        print(f"{label:<44}{seconds:>10.4f}{ratio}")
        previous = seconds


def symmetric_networks() -> None:
    rng = random.Random(0)

    def ring(n):
        return [("A", (f"x{k}", f"x{(k + 1) % n}")) for k in range(n)]

    def shuffled(factors):
        factors = list(factors)
        rng.shuffle(factors)
        names = sorted({i for _, idx in factors for i in idx})
        new = names[:]
        rng.shuffle(new)
        rename = dict(zip(names, new))
        return tuple((n, tuple(rename[i] for i in idx)) for n, idx in factors)

    tournament = [("T", (f"v{u}", f"v{v}")) for u in range(7) for v in range(7)
                  if (v - u) % 7 in {1, 2, 4}]
    cases = {"ring of 64 identical tensors": ring(64),
             "ring of 256 identical tensors": ring(256),
             "regular tournament on 7 vertices": tournament}
    print(f"\n{'canonical form (shuffled, relabelled)':<44}{'median s':>10}")
    for label, factors in cases.items():
        case = shuffled(factors)
        assert canonical(case, set()) == canonical(tuple(factors), set())
        print(f"{label:<44}{median_seconds(lambda: canonical(case, set())):>10.4f}")


def main() -> None:
    torch.set_num_threads(2)
    qk_expansion()
    path_expansions()
    symmetric_networks()


if __name__ == "__main__":
    main()
