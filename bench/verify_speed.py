"""How long proving the QK-composition expansion takes (`tndsl verify`), against
evaluating both sides once numerically at small sizes, in one run.

    python bench/verify_speed.py
"""
from __future__ import annotations

from pathlib import Path

from timing import median_seconds

import torch

import tndsl
from tndsl.verify import prove
from tndsl.verify.numeric import float_sides, random_tensors, small_program

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "attn_only_2l.tn"


def main() -> None:
    program = tndsl.load(EXAMPLE)
    (check,) = program.checks
    small = small_program(program)
    (small_check,) = small.checks
    values = random_tensors(small, torch.Generator().manual_seed(0))
    result = prove(program, check, small)
    assert result.status == "proven", result.render()
    proof = median_seconds(lambda: prove(program, check, small))
    numeric = median_seconds(lambda: float_sides(small, small_check, values))
    print(f"{'QK expansion (16 monomials a side)':<40}{'median s':>10}{'ratio':>8}")
    print(f"{'one float64 evaluation at small sizes':<40}{numeric:>10.4f}{1.0:>8.2f}")
    print(f"{'symbolic proof':<40}{proof:>10.4f}{proof / numeric:>8.2f}")


if __name__ == "__main__":
    main()
