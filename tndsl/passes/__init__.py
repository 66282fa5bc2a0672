"""Passes over the checked IR: contraction planning."""
