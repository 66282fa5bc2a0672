"""Check a compiled module against the reference evaluator on random data.

Both run at small sizes (dims shrunk consistently with their expressions, and large
enough that every mask boundary is reachable: `numeric.small_sizes`), in float64, on the
same random params and inputs; the report gives the largest difference per output. Data
whose reference values overflow float64 is redrawn at half the scale (up to
OVERFLOW_REDRAWS times); an output that still overflows is reported as "random data
overflowed", never as a mismatch. This is what `tndsl verify --compiled` runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from tndsl.verify.numeric import random_tensors, small_program, small_sizes
from tndsl.verify.reference import Reference

OVERFLOW_REDRAWS = 8

# Relative: an output may differ by TOLERANCE times its scale, the largest |value| of
# the reference (or 1 where every value is smaller). Rounding grows with the values
# (`1000000 * A B C` differs by ~1e-9 on rounding alone); a lowering bug is off by a
# fraction of the values themselves, some seven orders of magnitude above this.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class ComparisonReport:
    sizes: dict[str, int]
    differences: dict[str, float]   # output -> largest absolute difference
    scales: dict[str, float]        # output -> largest absolute reference value
    tolerance: float                # relative to max(1, scale), per output
    overflowed: tuple[str, ...] = ()  # outputs whose reference overflowed on every draw
    notes: tuple[str, ...] = ()       # what the sizes could not meet (mask boundaries)

    def allowed(self, name: str) -> float:
        """The largest absolute difference output `name` may have."""
        return self.tolerance * max(1.0, self.scales[name])

    def relative(self, name: str) -> float:
        return self.differences[name] / max(1.0, self.scales[name])

    @property
    def ok(self) -> bool:
        """No output differs beyond the tolerance (an overflowed one is not compared)."""
        return all(d <= self.allowed(name) for name, d in self.differences.items()
                   if name not in self.overflowed)

    @property
    def complete(self) -> bool:
        """Every output was compared, at sizes that reach every mask boundary."""
        return not self.overflowed and not self.notes

    @property
    def worst(self) -> float:
        """The largest relative difference (absolute where the values are below 1)."""
        return max((self.relative(name) for name in self.differences
                    if name not in self.overflowed), default=0.0)

    def render(self) -> str:
        sizes = ", ".join(f"{k} = {v}" for k, v in self.sizes.items())
        lines = [f"compiled vs reference (float64, sizes {sizes}):"]
        width = max((len(name) for name in self.differences), default=0)
        for name, diff in self.differences.items():
            if name in self.overflowed:
                lines.append(f"  {name:<{width}}  random data overflowed float64 in the "
                             f"reference on {OVERFLOW_REDRAWS} draws: not compared")
                continue
            verdict = "ok" if diff <= self.allowed(name) else "MISMATCH"
            lines.append(f"  {name:<{width}}  max |diff| = {diff:.3e}  "
                         f"(max |value| = {self.scales[name]:.3e}, "
                         f"allowed {self.allowed(name):.1e})  {verdict}")
        lines += [f"  note: {note}" for note in self.notes]
        verdict = "FAILED" if not self.ok else "passed" if self.complete else \
            "passed where compared (incomplete)"
        lines.append(f"{verdict}: largest difference "
                     f"{self.worst:.3e} relative, tolerance {self.tolerance:.0e} relative "
                     "(times max(1, max |value|) of each output)")
        return "\n".join(lines)


def compare_compiled(program, *, dims: Mapping[str, int] | None = None, seed: int = 0,
                     outputs: list[str] | None = None, tolerance: float = TOLERANCE,
                     optimizer: str = "auto") -> ComparisonReport:
    from tndsl.codegen.torch import generate
    # Re-elaborating at the sizes the program already has would give the same program.
    same_sizes = dims is not None and None not in program.sizes.values() and \
        all(program.sizes.get(name) == size for name, size in dims.items())
    notes: tuple[str, ...] = ()
    if same_sizes:
        small = program
    elif dims is not None:
        small = small_program(program, dims)
    else:
        sizes, notes = small_sizes(program)
        small = program.reparse(sizes)
    if outputs is None:
        outputs = [eq.name for eq in small.outputs]
    generated = generate(small, outputs, optimizer=optimizer)
    module = generated.build().to(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    base = random_tensors(small, generator)
    differences, scales, overflowed = {}, {}, []
    pending = list(generated.outputs)
    for draw in range(OVERFLOW_REDRAWS):
        scale = 0.5 ** draw
        values = {n: v * scale if v.is_floating_point() else v for n, v in base.items()}
        with torch.no_grad():
            for name, param in module.named_parameters():
                param.copy_(values[name])
            result = module(*(values[name] for name in generated.inputs))
        if len(generated.outputs) == 1:
            result = {generated.outputs[0]: result}
        reference = Reference(small, values)
        still = []
        for name in pending:
            expected = reference[name].detach()
            if expected.numel() and not bool(torch.isfinite(expected).all()):
                still.append(name)  # the data overflowed: redraw smaller
                continue
            differences[name] = float((result[name].detach() - expected).abs().max()) \
                if expected.numel() else 0.0
            if differences[name] != differences[name]:  # NaN where the reference is finite
                differences[name] = float("inf")
            scales[name] = float(expected.abs().max()) if expected.numel() else 0.0
        pending = still
        if not pending:
            break
    for name in pending:
        differences[name], scales[name] = 0.0, 0.0
        overflowed.append(name)
    differences = {n: differences[n] for n in generated.outputs}
    scales = {n: scales[n] for n in generated.outputs}
    used = {n: v for n, v in small.sizes.items() if v is not None}
    return ComparisonReport(used, differences, scales, tolerance, tuple(overflowed), notes)
