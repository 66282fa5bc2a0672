"""tndsl: tensor-network diagrams as source files, compiled, drawn and verified.

    >>> import tndsl
    >>> program = tndsl.load("examples/mlp.tn", dims={"Batch": 8})
    >>> print(program.summary())
"""
from tndsl.errors import TnError, TnErrors, TnWarning
from tndsl.program import Program, load, parse

__version__ = "0.1.0"



def from_pretrained(folder, dtype=None, *, context=None):
    """The compiled model of a Hugging Face checkpoint folder (gpt2, gpt_neox, llama,
    mistral, qwen2, gemma) with its weights loaded; see `tndsl.families`."""
    from tndsl.families import from_pretrained as load_family
    return load_family(folder, dtype, context=context)


__all__ = ["Program", "TnError", "TnErrors", "TnWarning", "from_pretrained", "load", "parse",
           "__version__"]
