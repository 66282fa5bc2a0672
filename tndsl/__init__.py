"""tndsl: tensor-network diagrams as source files, compiled, drawn and verified.

    >>> import tndsl
    >>> program = tndsl.load("examples/mlp.tn", dims={"Batch": 8})
    >>> print(program.summary())
"""
from tndsl.errors import TnError, TnErrors, TnWarning
from tndsl.program import Program, load, parse

__version__ = "0.1.0"

__all__ = ["Program", "TnError", "TnErrors", "TnWarning", "load", "parse", "__version__"]
