"""Checked IR → a standalone, readable PyTorch module (Python source), and the module.

The file has one `nn.Module` class per block used (instances of one block share it),
the root class last. Each instance is a submodule at its `.tn` path, so `state_dict()`
keys are the param paths (`blocks.3.attn.W_Q`); a loop over instances of one block is
an `nn.ModuleList` iterated in `forward`; every equation passes through a `HookPoint`
submodule. How equations become statements: `codegen.lower`; which instances get a
class: `codegen.structure`; loops: `codegen.loops`; the optional passes (fusion,
liveness): `passes.fusion`.

Generating source does not import torch (only `Generated.build` does): `tndsl compile`
writes a text file.
"""
from __future__ import annotations

import linecache
from dataclasses import dataclass
from typing import Iterable, Sequence

from tndsl import __version__

from tndsl.lang import ir
from tndsl.codegen import decode as decode_code
from tndsl.codegen.classes import ClassBuilder, RESERVED_ATTRS, relative, relative_equation
from tndsl.codegen.helpers import helper_imports, helper_source
from tndsl.codegen.lower import Options
from tndsl.codegen.names import MODULE_NAMES, Namespace, class_name as make_class_name
from tndsl.codegen.structure import analyse, within
from tndsl.lang.errors import SizeError, TnError
from tndsl.passes.decode import DecodeError, NoPositions, derive as derive_decoding
from tndsl.passes.fusion import resolve
from tndsl.passes.plan import DEFAULT_MEMORY_BUDGET, check_entries, optimizers_for
from tndsl.lang.text import python_string

# Between the model's classes and the run-time helpers they call.
HELPERS_BANNER = ("# ---- Run-time helpers " + "-" * 64 + "\n"
                  "# Not specific to this model: each is the same text in every file tndsl writes.")


@dataclass(frozen=True)
class Generated:
    """Source of a module and what its forward takes and returns."""

    source: str
    class_name: str
    inputs: tuple[str, ...]       # .tn names, in forward's argument order
    arguments: tuple[str, ...]    # the matching Python parameter names
    outputs: tuple[str, ...]
    filename: str

    def build(self):
        """Execute the generated source (ours, not the user's) and instantiate the class."""
        linecache.cache[self.filename] = (len(self.source), None,
                                          self.source.splitlines(True), self.filename)
        namespace: dict = {"__name__": f"tndsl_generated_{self.class_name}"}
        exec(compile(self.source, self.filename, "exec"), namespace)
        module = namespace[self.class_name]()
        module.tndsl_source = self.source
        return module


def generate(program, outputs: Sequence[str] | None = None, *, optimizer: str = "auto",
             memory_budget: int = DEFAULT_MEMORY_BUDGET, name: str | None = None,
             fuse: Iterable[str] | bool = True, no_fuse: Iterable[str] = (),
             vary: Iterable[str] | None = None, shard: Sequence[str] | str | None = None,
             ranks: int = 2, decode: bool = True) -> Generated:
    """Generate the module for `program` computing `outputs` (default: the final equation).

    `fuse` / `no_fuse`: the optional passes to run (`passes.fusion.PASSES`; True: all
    but the opt-in `projections`; "all": every one). `vary`: sized dims that the inputs may have shorter (positional params
    are sliced to the input's length); default: the positions of token-id inputs.
    `shard`: dims to shard; the root class gets a `parallelize(mesh)` method applying
    the tensor-parallel plan (`codegen.shard`), checked for `ranks` ranks. `decode`:
    give the forward a `cache=None` argument and the root a `new_cache()` method for
    incremental decoding where `passes.decode` derives it (`codegen.decode`)."""
    return _File(program, outputs, optimizer, memory_budget, name, resolve(fuse, no_fuse),
                 vary, (shard, ranks) if shard is not None else None, decode).run()


def varying_dims(program, vary: Iterable[str] | None, used: set[str] | None = None
                 ) -> frozenset[str]:
    """The sized dims read from the inputs at run time. By default the dims of the
    other legs of the one-hot inputs the module reads (a token sequence's positions): an
    HF-style model takes any sequence up to its context. A dim that sizes another dim
    cannot vary."""
    sizes = program.sizes
    derived = {s.name for d in program.network.dims if d.size is not None
               for s in d.size.free_symbols}
    inputs = [t for t in program.network.tensors if t.kind == "input"
              and (used is None or t.name in used)]
    on_inputs = {leg.dim for t in inputs for leg in t.legs if leg.name != t.onehot}
    if vary is None:
        chosen = {leg.dim for t in inputs if t.onehot is not None
                  for leg in t.legs if leg.name != t.onehot}
        return frozenset(d for d in chosen if sizes.get(d) is not None and d not in derived)
    chosen = [vary] if isinstance(vary, str) else list(vary)
    for dim in chosen:
        if dim not in sizes:
            from tndsl.lang.errors import UnknownNameError, did_you_mean
            raise UnknownNameError(f"no dim `{dim}` to vary", hint=did_you_mean(dim, sizes))
        if dim not in on_inputs:
            raise TnError(f"dim `{dim}` cannot vary at run time: no input has a leg of it")
        if dim in derived:
            raise TnError(f"dim `{dim}` cannot vary at run time: another dim is defined by it")
    return frozenset(d for d in chosen if sizes.get(d) is not None)


class _File:
    def __init__(self, program, outputs, optimizer, memory_budget, name, passes, vary,
                 shard=None, decode=True):
        self.program = program
        self.network: ir.Network = program.network
        source = self.network.source
        self.source_name = source.name if source else "<string>"
        stem = name or (self.source_name.rsplit("/", 1)[-1].removesuffix(".tn")
                        if source else "model")
        self.sizes = program.sizes
        optimizers_for(optimizer, "ab", "")  # an unknown name fails here, listing the valid ones
        self.equations = {eq.name: eq for eq in self.network.equations}
        self.outputs = self._outputs(outputs)
        self.order = ir.dependency_order(self.network, list(self.outputs))
        self.needed = {eq.name for eq in self.order}
        used = {r.name for eq in self.order for r in ir.refs(eq.rhs)}
        self.params = [t for t in self.network.tensors if t.kind == "param"]
        self.inputs = [t for t in self.network.tensors if t.kind == "input" and t.name in used]
        self.options = Options(self.sizes, optimizer, memory_budget,
                               varying_dims(program, vary, used), passes)
        self.helpers = self.options.helpers
        self._check_param_paths()
        # Dims read from the inputs at run time: unsized, or sized but varying.
        self.runtime = frozenset(d for d, s in self.sizes.items() if s is None) | \
            self.options.varying
        self.structure = analyse(self.network, self.order, self.outputs, self.runtime)
        self.class_names = Namespace({"HookPoint"} | set(MODULE_NAMES))
        self.root_name = self.class_names("root", make_class_name(stem))
        self.classes: dict[tuple, tuple[str, object]] = {}   # (path, batched) -> (name, src)
        self.by_text: dict[str, str] = {}
        self.texts: list[tuple[str, str]] = []               # (name, text), in order
        self._batched: dict[str, bool] = {}
        self._relative: dict[str, dict] = {}
        self._params_rel: dict[str, dict] = {}
        self.shard: tuple | None = shard   # (dims, ranks) for a parallelize method
        self._decoding(decode)

    def _decoding(self, wanted: bool) -> None:
        """The decoding plan (`passes.decode`), the equations whose code reads the cache,
        and the reason a sequence model cannot decode incrementally, if it cannot."""
        self.decode, self.decode_refused, self.positional = None, None, set()
        if not wanted:
            return
        try:
            plan = derive_decoding(self.network, self.sizes)
        except NoPositions:
            return
        except DecodeError as e:
            self.decode_refused = str(e)
            return
        if plan.dim not in self.runtime:  # every call has the whole sequence: no cache
            return
        self.decode = plan
        self.positional = decode_code.positional(self.network, plan, self.order)

    def takes_cache(self, path: str) -> bool:
        """Whether the class of instance `path` (the root: "") takes a decoding cache."""
        return self.decode is not None and (
            not path or any(within(name, path) for name in self.positional))

    def _outputs(self, outputs) -> tuple[str, ...]:
        if outputs is None:
            final = self.program.final
            if final is None:
                raise TnError("the program has no equations to compile")
            return (final.name,)
        missing = [o for o in outputs if o not in self.equations]
        if missing:
            from tndsl.lang.errors import UnknownNameError, did_you_mean
            raise UnknownNameError(f"no equation `{missing[0]}` to output",
                                   hint=did_you_mean(missing[0], self.equations))
        return tuple(dict.fromkeys(outputs))

    def _check_param_paths(self) -> None:
        paths = {p.name for p in self.params}
        for param in self.params:
            parts = param.name.split(".")
            for k in range(1, len(parts)):
                prefix = ".".join(parts[:k])
                if prefix in paths:
                    raise TnError(f"param `{prefix}` is also a prefix of `{param.name}`; a state "
                                  "dict cannot hold both", param.span)
            for part in parts:
                if part in RESERVED_ATTRS:
                    raise TnError(f"param path `{param.name}` uses `{part}`, an attribute of "
                                  "torch.nn.Module", param.span, hint="rename that segment")
            for leg in param.legs:
                if self.sizes.get(leg.dim) is None:
                    raise SizeError(f"param `{param.name}` has a leg of dim `{leg.dim}`, which "
                                    "has no size", param.span,
                                    hint=f"give it one when loading: dims={{{leg.dim!r}: ...}}")
            entries = 1
            for leg in param.legs:
                entries *= self.sizes[leg.dim]
            check_entries(entries, self.options.memory_budget, f"param `{param.name}`",
                          param.span)

    # ---- shared facts the classes ask for ----------------------------------------------
    def batched(self, name: str) -> bool:
        """Whether a value depends on an input (so may carry leading batch dims)."""
        if name not in self._batched:
            for eq in self.order:
                if eq.name not in self._batched:
                    self._batched[eq.name] = any(self._leaf_batched(r.name)
                                                 for r in ir.refs(eq.rhs))
        return self._leaf_batched(name)

    def _leaf_batched(self, name: str) -> bool:
        if name in self._batched:
            return self._batched[name]
        return any(t.name == name and t.kind == "input" for t in self.network.tensors)

    def relative_equations(self, path: str) -> dict:
        if path not in self._relative:
            self._relative[path] = {relative(eq.name, path): relative_equation(eq, path)
                                    for eq in self.order if within(eq.name, path)}
        return self._relative[path]

    def param_by_relative(self, path: str) -> dict:
        if path not in self._params_rel:
            self._params_rel[path] = {relative(t.name, path): t for t in self.params
                                      if within(t.name, path)}
        return self._params_rel[path]

    def class_for(self, path: str, batched: tuple[bool, ...]) -> tuple[str, object]:
        """The class of instance `path` (generated on first use; instances whose code is
        the same share one class)."""
        key = (path, batched)
        if key not in self.classes:
            source = ClassBuilder(self, path, batched).build()
            text = source.text
            if text not in self.by_text:
                block = self.structure.instances[path].block
                name = self.class_names(f"text:{len(self.by_text)}", make_class_name(block))
                self.by_text[text] = name
                self.texts.append((name, text))
            self.classes[key] = (self.by_text[text], source)
        return self.classes[key]

    # ---- the file --------------------------------------------------------------------
    def run(self) -> Generated:
        root = ClassBuilder(self, "")
        source = root.build()
        text = source.text
        if self.shard is not None:
            from tndsl.codegen.shard import parallelize_method
            method = parallelize_method(self.program, *self.shard, self.outputs)
            text = text.rstrip("\n") + "\n\n" + "\n".join(method)
        self.texts.append((self.root_name, text))
        lines = [
            f"# Generated by tndsl {__version__}. Needs only torch.",
            "# Do not edit: regenerate with `tndsl compile`.",
            f"# Source: {python_string(self.source_name)}",
            *helper_imports(self.helpers),
        ]
        # The model's classes first, as a reader wants them; the run-time helpers they
        # call (the same text in every file tndsl writes, only those used) after them.
        chunks = [text.replace("{NAME}", name, 1).rstrip("\n") for name, text in self.texts]
        helpers = helper_source(self.helpers)
        if helpers:
            chunks += [HELPERS_BANNER + "\n\n\n" + helpers[0], *helpers[1:]]
        # Two blank lines between top-level definitions, as PEP 8 has it.
        source_text = "\n\n\n".join(["\n".join(lines)] + chunks) + "\n"
        filename = f"<tndsl:{self.root_name}>"
        return Generated(source_text, self.root_name, tuple(t.name for t in self.inputs),
                         source.arguments, self.outputs, filename)
