"""Dense values of fixed tensors (`tndsl.lang.fixed`) for the reference evaluator.

Written from the definitions, entry by entry, and sharing nothing with the compiled
cos/sin and repeat_interleave forms (`tndsl.codegen.fixed`) that they check.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from tndsl.lang import fixed, ir


def dense(tensor: ir.Tensor, sizes: Mapping[str, int | None],
          dtype: torch.dtype = torch.float64) -> torch.Tensor:
    shape = [sizes[leg.dim] for leg in tensor.legs]
    if tensor.fixed.function == "rotary":
        if fixed.interleaved(tensor):
            return _rotary_interleaved(shape, tensor.fixed.args[0],
                                       fixed.rotated(tensor, sizes), dtype)
        return _rotary(shape, tensor.fixed.args[0], fixed.rotated(tensor, sizes), dtype)
    if tensor.fixed.function == "alibi":
        heads, queries, keys = shape
        value = torch.zeros(shape, dtype=torch.float64)
        for h, slope in enumerate(fixed.alibi_slopes(heads)):
            for p in range(queries):
                for s in range(keys):
                    value[h, p, s] = slope * (s - p)
        return value.to(dtype)
    if tensor.fixed.function == "grouping":
        heads, groups = shape
        value = torch.zeros(shape, dtype=dtype)
        for h in range(heads):
            value[h, h // (heads // groups)] = 1
        return value
    raise NotImplementedError(f"no dense value for fixed tensor {tensor.fixed.function!r}")


def _rotary(shape, base: float, rotated: int, dtype) -> torch.Tensor:
    """R[p, e, f]: (R[p] x)[i] = x[i] cos(p ω_i) - x[i + half] sin(p ω_i), and
    (R[p] x)[i + half] = x[i + half] cos(p ω_i) + x[i] sin(p ω_i) for i < half =
    rotated / 2, with ω_i = base^(-2i / rotated); entries from `rotated` on pass through."""
    positions, head, _ = shape
    half = rotated // 2
    value = torch.zeros(shape, dtype=torch.float64)
    for p in range(positions):
        for i in range(half):
            angle = p * base ** (-2 * i / rotated)
            c, s = math.cos(angle), math.sin(angle)
            value[p, i, i] = c
            value[p, i, i + half] = -s
            value[p, i + half, i + half] = c
            value[p, i + half, i] = s
        for i in range(rotated, head):
            value[p, i, i] = 1
    return value.to(dtype)


def _rotary_interleaved(shape, base: float, rotated: int, dtype) -> torch.Tensor:
    """GPT-J's R[p, e, f]: (R[p] x)[2i] = x[2i] cos(p ω_i) - x[2i + 1] sin(p ω_i), and
    (R[p] x)[2i + 1] = x[2i + 1] cos(p ω_i) + x[2i] sin(p ω_i) for 2i < rotated, with
    ω_i = base^(-2i / rotated); entries from `rotated` on pass through."""
    positions, head, _ = shape
    value = torch.zeros(shape, dtype=torch.float64)
    for p in range(positions):
        for i in range(rotated // 2):
            angle = p * base ** (-2 * i / rotated)
            c, s = math.cos(angle), math.sin(angle)
            value[p, 2 * i, 2 * i] = c
            value[p, 2 * i, 2 * i + 1] = -s
            value[p, 2 * i + 1, 2 * i + 1] = c
            value[p, 2 * i + 1, 2 * i] = s
        for i in range(rotated, head):
            value[p, i, i] = 1
    return value.to(dtype)
