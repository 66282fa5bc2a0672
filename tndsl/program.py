"""The checked program a user holds: the pipeline's entry points and what it reports."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import sympy

from tndsl.lang import dims as dimmod, ir, printer
from tndsl.lang.check import check
from tndsl.lang.elaborate import elaborate
from tndsl.lang.errors import ArgumentError, ErrorSink, TnError, TnWarning
from tndsl.lang.files import read_limited
from tndsl.lang.finite import coefficient_errors
from tndsl.lang.syntax import parse_module
from tndsl.lang.syntax.parser import MAX_SOURCE_CHARS
from tndsl.lang.text import terminal


def parse(text: str, name: str = "<string>", dims: Mapping[str, int] | None = None,
          consts: Mapping[str, float] | None = None, *,
          extra_dims: str = "error") -> "Program":
    """Parse, elaborate and check `.tn` text; raise `TnError` listing every mistake found.
    `dims` gives or overrides dim sizes by name, `consts` the values of consts. A size
    for a dim the file does not declare is an error, unless `extra_dims="ignore"`
    (passing one file's `program.sizes` to another); a size of None is always an error
    (leave the dim out to keep the file's own size)."""
    if extra_dims not in ("error", "ignore"):
        raise ValueError(f"extra_dims must be 'error' or 'ignore', not {extra_dims!r}")
    module = parse_module(text, name)
    if extra_dims == "ignore" and dims:
        from tndsl.lang.syntax import ast
        declared = {s.name.name for s in module.statements if isinstance(s, ast.DimDecl)}
        dims = {k: v for k, v in dims.items() if k in declared}
    elaborated = elaborate(module, dims, consts)
    checked = check(elaborated.network)
    errors = ErrorSink()
    for error in elaborated.errors + checked.errors + coefficient_errors(
            checked.network, elaborated.sizes):
        errors.add(error)
    errors.raise_if_any()
    return Program(checked.network, elaborated.sizes, tuple(checked.warnings),
                   dict(consts or {}))


def load(path: str | Path, dims: Mapping[str, int] | None = None,
         consts: Mapping[str, float] | None = None, *,
         extra_dims: str = "error") -> "Program":
    """Read and check a `.tn` file. `dims` gives or overrides dim sizes by name, `consts`
    the values of consts (`const Eps = 1e-5`). `extra_dims="ignore"` drops sizes for
    dims the file does not declare (by default they are an error); a size of None is
    always an error."""
    path = Path(path)
    # UTF-8 takes at most 4 bytes a character: no file within the character limit is
    # refused here, and no read goes past 4 bytes a character (tndsl.lang.files).
    data = read_limited(path, 4 * MAX_SOURCE_CHARS, what=".tn source")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TnError(f"cannot read {terminal(path)}: {e}") from None
    return parse(text, str(path), dims, consts, extra_dims=extra_dims)


@dataclass(frozen=True)
class Program:
    """A checked network with its dim sizes (None where a dim is left symbolic)."""

    network: ir.Network
    sizes: Mapping[str, int | None]
    warnings: tuple[TnWarning, ...] = ()
    consts: Mapping[str, float] = field(default_factory=dict)  # the values given at load

    def reparse(self, dims: Mapping[str, int], text: str | None = None,
                name: str | None = None) -> "Program":
        """This program's source (or `text`, named `name`) elaborated again with these
        dim sizes and the consts this program was loaded with."""
        source = self.network.source
        return parse(source.text if text is None else text,
                     source.name if name is None else name, dims, self.consts)

    # ---- lookups ---------------------------------------------------------------------
    @property
    def params(self) -> tuple[ir.Tensor, ...]:
        return tuple(t for t in self.network.tensors if t.kind == "param")

    @property
    def inputs(self) -> tuple[ir.Tensor, ...]:
        return tuple(t for t in self.network.tensors if t.kind == "input")

    @property
    def equations(self) -> tuple[ir.Equation, ...]:
        return self.network.equations

    @property
    def checks(self) -> tuple[ir.Check, ...]:
        return self.network.checks

    def equation(self, name: str) -> ir.Equation:
        for eq in self.network.equations:
            if eq.name == name:
                return eq
        raise KeyError(name)

    @property
    def outputs(self) -> tuple[ir.Equation, ...]:
        """Equations no other equation uses, in definition order."""
        used = {r.name for eq in self.network.equations for r in ir.refs(eq.rhs)}
        return tuple(eq for eq in self.network.equations if eq.name not in used)

    @property
    def final(self) -> ir.Equation | None:
        """The last equation written at the top level of the file: the default output."""
        top = [eq for eq in self.network.equations if not eq.instance]
        return top[-1] if top else None

    def legs(self, name: str) -> tuple[ir.Leg, ...]:
        for tensor in self.network.tensors:
            if tensor.name == name:
                return tensor.legs
        return self.equation(name).legs

    def shape(self, name: str) -> tuple[sympy.Expr, ...]:
        """Sizes of `name`'s legs: integers where known, dim symbols otherwise."""
        return tuple(dimmod.evaluate(dimmod.symbol(leg.dim), self.sizes)
                     for leg in self.legs(name))

    def parameter_count(self) -> sympy.Expr:
        total = sympy.Add(*(dimmod.numel(t) for t in self.params))
        return dimmod.evaluate(total, self.sizes)

    # ---- back ends (imported on use: checking never loads torch) ---------------------
    def compile(self, outputs: Sequence[str] | None = None, **options):
        """Generated PyTorch source (`.source`) for `outputs` (default: the final
        equation). Options: optimizer, memory_budget, name; fuse / no_fuse (the
        optional passes, `tndsl.passes.fusion.PASSES`); vary (dims the inputs may have
        shorter, default the token positions); shard, ranks (dims to shard: the root
        class gets a `parallelize(mesh)` method, docs/distributed.md); decode (default
        True: a `cache=` argument and `new_cache()` for incremental decoding where the
        file allows it, docs/compiling.md). Does not import torch."""
        from tndsl.codegen.torch import generate
        return generate(self, outputs, **options)

    def module(self, outputs: Sequence[str] | None = None, **options):
        """A `torch.nn.Module` computing `outputs`; its source is `.tndsl_source`,
        `.tndsl_program` is this program (what `tndsl.interp.cache` reads the residual
        stream from, and `tndsl.generate` the decoding plan) and `.tndsl_outputs` its
        outputs."""
        compiled = self.compile(outputs, **options)
        module = compiled.build()
        module.tndsl_program, module.tndsl_outputs = self, compiled.outputs
        return module

    def verify_compiled(self, **options):
        """Compare the compiled module with the reference evaluator at small sizes."""
        from tndsl.verify.compiled import compare_compiled
        return compare_compiled(self, **options)

    def render(self, name: str | None = None, *, expand: bool = False, depth: int = 0,
               indices: bool = False, check: str | None = None, **options):
        """The figure of equation `name` (default: the final one), or of `check` drawn as
        `lhs = rhs` (`.scene` holds its layout in pt, `.source` its DOT;
        `.save("fig.pdf")`; shows inline in Jupyter). `depth` is a whole number ≥ 0.
        `options`: width ("3.25in"), font_size, font, legs ("p/m"), hooks, lhs
        (tndsl.render.figure)."""
        from tndsl.render import check_figure, figure
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ArgumentError(f"depth must be a whole number of levels, at least 0, got "
                                f"{terminal(repr(depth))}")
        if check is not None:
            drawn_only = [k for k in ("hooks", "lhs", "term_labels") if options.get(k)]
            if drawn_only:
                raise ArgumentError(f"{drawn_only[0]}= draws an equation, not a check: "
                                    f"render(NAME, {drawn_only[0]}=...) without check=")
            options = {k: v for k, v in options.items()
                       if k not in ("hooks", "lhs", "term_labels")}
            return check_figure(self, check, expand=expand, depth=depth, indices=indices,
                                **options)
        return figure(self, name, expand=expand, depth=depth, indices=indices, **options)

    # ---- reports ---------------------------------------------------------------------
    def dump(self) -> str:
        return printer.dump(self.network, dict(self.sizes))

    def summary(self) -> str:
        lines = []
        dims = []
        for dim in self.network.dims:
            size = self.sizes.get(dim.name)
            text = f"{dim.name} = {size if size is not None else '?'}"
            if dim.size is not None and dim.size.free_symbols:
                text += f" ({printer.format_scalar(dim.size)})"
            dims.append(text)
        lines.append("  dims     " + (", ".join(dims) or "none"))
        count = self.parameter_count()
        lines.append(f"  params   {len(self.params)} tensors, {printer.format_count(count)} parameters")
        lines.extend(_tensor_table(self.params, self.sizes))
        lines.append(f"  inputs   {len(self.inputs) or 'none'}")
        lines.extend(_tensor_table(self.inputs, self.sizes))
        lines.append("  outputs  " + ", ".join(
            f"{eq.name}{printer.legs_decl(eq.legs)}" for eq in self.outputs if not eq.instance))
        if self.checks:
            lines.append(f"  checks   {len(self.checks)}: " +
                         ", ".join(c.label for c in self.checks))
        else:
            lines.append("  checks   none")
        return "\n".join(lines)


def _tensor_table(tensors, sizes) -> list[str]:
    """One row per tensor; instances differing only in a layer number share a row."""
    groups: dict[tuple, list[ir.Tensor]] = {}
    for tensor in tensors:
        pattern = re.sub(r"(?<=\.)\d+(?=\.|$)", "#", tensor.name)
        groups.setdefault((pattern, tensor.legs, tensor.onehot), []).append(tensor)
    rows = []
    for (pattern, legs, onehot), members in groups.items():
        name = members[0].name if len(members) == 1 else _range_name(pattern, members)
        legs_text = ", ".join(f"{l.name}: {'onehot ' if l.name == onehot else ''}{l.dim}"
                              for l in legs)
        shape = " × ".join(printer.format_count(dimmod.evaluate(dimmod.symbol(l.dim), sizes)) for l in legs)
        repeat = f"  (×{len(members)})" if len(members) > 1 else ""
        rows.append((name, f"[{legs_text}]", (shape or "scalar") + repeat))
    width = [max((len(r[i]) for r in rows), default=0) for i in range(2)]
    return [f"    {a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows]


def _range_name(pattern: str, members: list[ir.Tensor]) -> str:
    numbers = [re.findall(r"(?<=\.)\d+(?=\.|$)", m.name) for m in members]
    if pattern.count("#") == 1:
        values = sorted(int(n[0]) for n in numbers)
        if values == list(range(values[0], values[0] + len(values))):
            return pattern.replace("#", f"{{{values[0]}..{values[-1]}}}")
    return pattern.replace("#", "*")
