"""Verification: proofs of `check` identities, the reference evaluator, and the
comparison of compiled modules against it."""
from tndsl.verify.prove import Result, equivalent, prove, prove_all

__all__ = ["Result", "equivalent", "prove", "prove_all"]
