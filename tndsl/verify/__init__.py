"""Verification: the reference evaluator and comparisons against it."""
