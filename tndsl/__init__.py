"""tndsl: tensor-network diagrams as source files, compiled, drawn and verified.

    >>> import tndsl
    >>> program = tndsl.load("examples/mlp.tn", dims={"Batch": 8})
    >>> print(program.summary())

The package is laid out by stage (docs/architecture.md): `lang` (the front end), `passes`,
`codegen`, `render`, `verify`, `interp`, `models`, `parallel`. Every public submodule is
reachable as an attribute (`tndsl.hooks`, `tndsl.weights`, `tndsl.families`, ...) and is
imported on first use, so `import tndsl` does not import torch.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from tndsl.lang.errors import TnError, TnErrors, TnWarning
from tndsl.program import Program, load, parse

__version__ = "0.1.0"


def from_pretrained(folder, dtype=None, *, context=None, tn=None):
    """The compiled model of a Hugging Face checkpoint folder with its weights loaded
    (`tn`: into your own `.tn` file instead of the family's); see
    `tndsl.models.from_pretrained` (docs/families.md lists the families). With the
    folder's tokenizer (`model.tokenizer`, None without a tokenizer.json) and the methods
    `generate`, `to_tokens`, `to_str_tokens`, `to_string` (`tndsl.interp.generate`)."""
    from tndsl.models import from_pretrained as load_family
    from tndsl.interp.generate import add_text_methods
    return add_text_methods(load_family(folder, dtype, context=context, tn=tn))


def generate(model, prompt, max_new_tokens=20, **options):
    """Continue a prompt (text or ids) with a compiled model, decoding incrementally
    with the cache derived from its diagram; see `tndsl.interp.generate.generate`."""
    from tndsl.interp.generate import generate as run
    return run(model, prompt, max_new_tokens, **options)


# Public names reached as attributes of `tndsl`, imported on first use.
_PUBLIC = {
    # stages
    "lang": "tndsl.lang", "passes": "tndsl.passes", "codegen": "tndsl.codegen",
    "render": "tndsl.render", "verify": "tndsl.verify", "interp": "tndsl.interp",
    "models": "tndsl.models", "parallel": "tndsl.parallel", "cli": "tndsl.cli",
    "program": "tndsl.program",
    # the modules users call by their short names
    "hooks": "tndsl.interp.hooks", "circuits": "tndsl.interp.circuits",
    "attribution": "tndsl.interp.attribution", "paths": "tndsl.interp.paths",
    "induction": "tndsl.interp.induction", "sae": "tndsl.interp.sae",
    "text": "tndsl.interp.generate", "patching": "tndsl.interp.patching",
    "plots": "tndsl.interp.plots",
    "weights": "tndsl.models", "families": "tndsl.models",
    "distributed": "tndsl.parallel.distributed", "slicing": "tndsl.parallel.slicing",
    "errors": "tndsl.lang.errors",
}


def __getattr__(name: str):
    if name in _PUBLIC:
        module = importlib.import_module(_PUBLIC[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module 'tndsl' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


# Import paths of the flat layout before round 3, kept for one release: importing one
# warns (DeprecationWarning) and gives the module at its new place, the same object.
_MOVED = {"tndsl.syntax": "tndsl.lang.syntax", "tndsl.syntax.ast": "tndsl.lang.syntax.ast",
          "tndsl.syntax.parser": "tndsl.lang.syntax.parser",
          "tndsl.families": "tndsl.models", "tndsl.families.loading": "tndsl.models.loading",
          "tndsl.families.tables": "tndsl.models.tables", "tndsl.weights": "tndsl.models"}
_MOVED.update({f"tndsl.{m}": f"tndsl.lang.{m}" for m in (
    "elaborate", "unroll", "dims", "scalars", "check", "boxes", "inits", "fixed", "ir",
    "printer", "text", "errors")})
_MOVED.update({f"tndsl.{m}": f"tndsl.interp.{m}" for m in (
    "hooks", "circuits", "attribution", "paths", "induction", "induction_report")})
_MOVED.update({f"tndsl.{m}": f"tndsl.parallel.{m}" for m in ("distributed", "slicing")})


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old import paths in `_MOVED` and loads each as its new module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = _MOVED[spec.name]
        warnings.warn(f"{spec.name} has moved to {new}; the old import path goes in the "
                      f"next release", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self._specs = getattr(self, "_specs", {})
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # The import system stamped the old name's spec on the module; give it its own.
        module.__spec__ = self._specs.pop(module.__spec__.name, module.__spec__)


sys.meta_path.insert(0, _MovedModules())

__all__ = ["Program", "TnError", "TnErrors", "TnWarning", "from_pretrained", "load", "parse",
           "__version__"]
