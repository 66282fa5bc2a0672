"""Passes over the checked IR, each a pure function: contraction planning, the fusions,
storage layout, liveness, costs and the tensor-parallel plan (docs/compiling.md).

May import: the front end (tndsl.lang), opt_einsum, sympy. Never torch, codegen, render,
verify or anything above them."""
