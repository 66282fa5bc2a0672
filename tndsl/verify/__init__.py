"""Verification: proofs of `check` identities, the reference evaluator, and the
comparison of compiled modules against it.

May import: the front end (tndsl.lang), passes, codegen (to build the module it compares),
sympy, opt_einsum and torch. Never render, program or anything above them."""
from tndsl.verify.prove import Result, equivalent, prove, prove_all

__all__ = ["Result", "equivalent", "prove", "prove_all"]
