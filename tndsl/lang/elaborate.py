"""Surface AST → IR: dims, scopes, block instantiation under paths, loop unrolling.

Names resolve like this:
- A scope is the top level or one block instance. Within a scope, definitions may be
  used before they are written (so definitions can form a cycle, which the checker
  reports); a use refers to the version current at that point in the text, or, for a
  name defined only later, to its final version.
- Inside a `for` body, defining a name that already exists *rebinds* it: the new
  version is `name@1`, `name@2`, ... and later uses see it. Anywhere else a second
  definition is an error.
- A block body sees its inputs, its own definitions, nested instances by path
  (`attn.pattern`) and, failing those, the top level. Loop variables do not leak into
  blocks.

Errors are collected; an equation whose names cannot be resolved is left out of the
network so the checker does not report follow-on errors about it.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Mapping

import sympy

from tndsl.lang import boxes, dims as dimmod, fixed, inits, ir
from tndsl.lang.errors import (BlockError, ErrorSink, LegError, Note, RedefinitionError,
                          ResourceError, SizeError, Span, TnError, UnknownNameError,
                          did_you_mean)
from tndsl.lang.scalars import Scalars
from tndsl.lang.syntax import ast
from tndsl.lang.finite import bounded_coefficient
from tndsl.lang.unroll import check_unrolled_size

MAX_STATEMENTS = 200_000   # after unrolling: a bound on program size, not a style rule
MAX_BLOCK_DEPTH = 64


@dataclass
class Elaborated:
    network: ir.Network
    sizes: dict[str, int | None]
    errors: list[TnError]


def elaborate(module: ast.Module, dim_sizes: Mapping[str, int] | None = None,
              consts: Mapping[str, float] | None = None) -> Elaborated:
    return _Elaborator(module, dim_sizes, consts).run()


@dataclass
class _Scope:
    prefix: str                    # "" at top level, "blocks.0.attn." in an instance
    parent: "_Scope | None"        # the top level, for a block instance
    serial: int
    block: str = ""                # name of the block being instantiated
    current: dict[str, str] = field(default_factory=dict)   # local name -> full name
    kinds: dict[str, str] = field(default_factory=dict)
    defined_at: dict[str, Span] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    pending: dict[str, list[Span]] = field(default_factory=dict)
    returned: Span | None = None


class _Unresolved(Exception):
    """Raised inside an equation whose names cannot be resolved; already reported."""


class _Elaborator:
    def __init__(self, module: ast.Module, dim_sizes: Mapping[str, int] | None,
                 consts: Mapping[str, float] | None = None):
        self.module = module
        self.dim_overrides = dict(dim_sizes or {})
        self.const_overrides = dict(consts or {})
        self.consts: dict[str, sympy.Expr] = {}
        self.errors = ErrorSink()
        self.dims: dict[str, ir.Dim] = {}
        # Every dim written at the top level, so a size may use one declared later.
        self.declared_dims = [s.name.name for s in module.statements
                              if isinstance(s, ast.DimDecl)]
        self.sizes: dict[str, int | None] = {}
        self.blocks: dict[str, ast.BlockDef] = {}
        self.tensors: dict[str, ir.Tensor] = {}
        self.equations: dict[str, ir.Equation] = {}
        self.instances: list[ir.Instance] = []
        self.checks: list[ir.Check] = []
        self.taken: dict[str, Span] = {}          # every full name defined, for clashes
        self.placeholders: dict[str, str] = {}    # placeholder -> full name or placeholder
        self.serials = itertools.count()
        self.block_stack: list[str] = []
        self.statements_done = 0

    # ---- driver ----------------------------------------------------------------------
    def run(self) -> Elaborated:
        top = [s for s in self.module.statements]
        for stmt in top:
            if isinstance(stmt, ast.DimDecl):
                self._declare_dim(stmt)
            elif isinstance(stmt, ast.BlockDef):
                self._declare_block(stmt)
        self.sizes = dimmod.resolve_sizes(self.dims, self.dim_overrides, self.errors)
        self.scalars = Scalars(self.dims, self.sizes, self.consts)
        self._declare_consts([s for s in top if isinstance(s, ast.ConstDecl)])
        scope = self._new_scope("", None)
        try:
            check_unrolled_size(top, self.blocks, self.sizes.get, MAX_STATEMENTS)
            self._statements(top, scope, {}, 0)
        except ResourceError as e:
            self.errors.add(e)
        self._close(scope)
        network = self._finish()
        return Elaborated(network, self.sizes, self.errors.errors)

    def _new_scope(self, prefix: str, parent: _Scope | None, block: str = "") -> _Scope:
        return _Scope(prefix, parent, next(self.serials), block)

    # ---- top-level declarations ------------------------------------------------------
    def _declare_dim(self, stmt: ast.DimDecl) -> None:
        name = stmt.name.name
        if name in self.dims:
            self.errors.add(RedefinitionError(
                f"dim `{name}` is declared twice", stmt.name.span,
                notes=[Note(self.dims[name].span, "first declared here")]))
            return
        size = None
        if stmt.size is not None:
            try:
                size = self._dim_size(stmt.size)
            except TnError as e:
                self.errors.add(e)
        self.dims[name] = ir.Dim(name, size, stmt.name.span)

    def _declare_consts(self, stmts) -> None:
        """Consts in order of writing (one may use an earlier one), then those given."""
        for stmt in stmts:
            name = stmt.name.name
            try:
                if name in self.dims or name in self.consts:
                    raise RedefinitionError(f"`{name}` is already a dim or const", stmt.name.span)
                value = self.scalars.value(stmt.value, {}, f"const `{name}`")
                if name in self.const_overrides:
                    given = self.const_overrides[name]
                    if isinstance(given, bool) or not isinstance(given, (int, float)):
                        raise SizeError(f"value given for const `{name}` must be a number, "
                                        f"not {given!r}", stmt.name.span)
                    value = sympy.nsimplify(given, rational=True)
                self.consts[name] = value
            except TnError as e:
                self.errors.add(e)
        for name in self.const_overrides:
            if name not in self.consts and not any(s.name.name == name for s in stmts):
                self.errors.add(UnknownNameError(f"value given for unknown const `{name}`",
                                                 hint=did_you_mean(name, self.consts)))

    def _dim_size(self, e: ast.Expr) -> sympy.Expr:
        if isinstance(e, ast.Number):
            return sympy.Rational(e.text)
        if isinstance(e, ast.BareName) and e.path.is_simple:
            name = e.path.segments[0]
            if name not in self.declared_dims:
                raise UnknownNameError(f"unknown dim `{name}`", e.span,
                                       hint=did_you_mean(name, self.declared_dims))
            return dimmod.symbol(name)
        if isinstance(e, ast.Binary):
            # Down the left spine iteratively: a long chain must not recurse per operand.
            operands = []
            node = e
            while isinstance(node, ast.Binary):
                operands.append((node.op, node.right))
                node = node.left
            value = self._dim_size(node)
            for op, operand in reversed(operands):
                right = self._dim_size(operand)
                if op in "/%" and right == 0:
                    raise TnError("division by zero", operand.span)
                value = sympy.Mod(value, right) if op == "%" else \
                    {"+": value + right, "-": value - right, "*": value * right,
                     "/": value / right if op == "/" else None}[op]
            return value
        if isinstance(e, ast.Negate):
            return -self._dim_size(e.operand)
        raise SizeError("a dim size is a number or an arithmetic expression of other dims",
                        e.span)

    def _declare_block(self, stmt: ast.BlockDef) -> None:
        name = stmt.name.name
        if name in self.blocks:
            self.errors.add(RedefinitionError(
                f"block `{name}` is defined twice", stmt.name.span,
                notes=[Note(self.blocks[name].name.span, "first defined here")]))
            return
        self.blocks[name] = stmt

    # ---- statements ------------------------------------------------------------------
    def _statements(self, stmts, scope: _Scope, env: dict[str, int], depth: int) -> None:
        for stmt in stmts:
            self.statements_done += 1
            if self.statements_done > MAX_STATEMENTS:
                raise ResourceError(f"program unrolls to more than {MAX_STATEMENTS:,} "
                                    "statements", stmt.span,
                                    hint="check the loop bounds")
            try:
                self._statement(stmt, scope, env, depth)
            except _Unresolved:
                pass
            except RecursionError:
                self.errors.add(ResourceError("expression nested too deeply to elaborate",
                                              stmt.span,
                                              hint="name intermediate results with equations"))
            except ResourceError:
                raise
            except TnError as e:
                self.errors.add(e)

    def _statement(self, stmt, scope: _Scope, env: dict[str, int], depth: int) -> None:
        at_top = scope.parent is None and depth == 0
        if isinstance(stmt, ast.DimDecl):
            if not at_top:
                raise BlockError("dims are declared at the top level of a file", stmt.span)
        elif isinstance(stmt, ast.BlockDef):
            if not at_top:
                raise BlockError("blocks are defined at the top level of a file", stmt.span)
        elif isinstance(stmt, ast.ConstDecl):
            if not at_top:
                raise BlockError("consts are declared at the top level of a file", stmt.span)
        elif isinstance(stmt, ast.FixedDecl):
            self._fixed_decl(stmt, scope, env, depth)
        elif isinstance(stmt, ast.TensorDecl):
            self._tensor_decl(stmt, scope, env, depth)
        elif isinstance(stmt, ast.Equation):
            self._equation(stmt, scope, env, depth)
        elif isinstance(stmt, ast.Return):
            self._return(stmt, scope, env, depth)
        elif isinstance(stmt, ast.ForLoop):
            self._for_loop(stmt, scope, env, depth)
        elif isinstance(stmt, ast.IfStmt):
            branch = stmt.body if self._holds(stmt, env) else stmt.orelse
            self._statements(branch, scope, env, depth)
        elif isinstance(stmt, ast.Check):
            self._check(stmt, scope, env)
        else:  # pragma: no cover - the parser produces nothing else
            raise TypeError(stmt)

    def _tensor_decl(self, stmt: ast.TensorDecl, scope: _Scope, env, depth) -> None:
        if stmt.kind == "input" and scope.parent is not None:
            self._define(scope, self._path(stmt.path, env), stmt.kind, stmt.path.span, depth)
            raise BlockError("a block takes its inputs as arguments, not `input` declarations",
                             stmt.span, hint="add it to the block's parameter list")
        local = self._path(stmt.path, env)
        try:
            legs = self._leg_decls(stmt.legs)
        except TnError:
            # Define the name all the same, so its uses are not reported as unknown too.
            self._define(scope, local, stmt.kind, stmt.path.span, depth)
            raise
        onehot = [leg for leg in stmt.legs if leg.onehot]
        if onehot and stmt.kind == "param":
            raise LegError("only an input can be one-hot", onehot[0].span)
        if len(onehot) > 1:
            raise LegError("an input has at most one one-hot leg", onehot[1].span)
        init = None
        if stmt.init is not None:
            args = tuple(float(a) for a in stmt.init.args)
            inits.validate(stmt.init.name.name, args, stmt.init.span)
            init = ir.Init(stmt.init.name.name, args)
        full = self._define(scope, local, stmt.kind, stmt.path.span, depth)
        self.tensors[full] = ir.Tensor(full, stmt.kind, legs,
                                       onehot[0].name.name if onehot else None, init, stmt.span)

    def _fixed_decl(self, stmt: ast.FixedDecl, scope: _Scope, env, depth) -> None:
        local = self._path(stmt.path, env)
        full = self._define(scope, local, "fixed", stmt.path.span, depth)
        legs = self._leg_decls(stmt.legs)
        function = stmt.function.name
        what = f"an argument of `{function}`"
        kind = fixed.FIXED.get(function)
        flags = kind.options if kind is not None else ()
        # Flags are written by name, after the numbers: `rotary(Theta, interleaved)`.
        options = []
        for a in stmt.args:
            if isinstance(a, ast.BareName) and a.path.is_simple and str(a.path) in flags \
                    and str(a.path) not in self.consts and str(a.path) not in self.dims:
                options.append(str(a.path))
            elif options:
                raise SizeError(f"the options of `{function}` come after its numbers",
                                a.span)
        numbers = stmt.args[:len(stmt.args) - len(options)]
        args = tuple(self.scalars.real(a, env, what) for a in numbers)
        fixed.validate(function, legs, args, self.sizes, stmt.span, stmt.function.span,
                       tuple(options))
        self.tensors[full] = ir.Tensor(full, "fixed", legs, span=stmt.span,
                                       fixed=ir.Fixed(function, args, tuple(options)))

    def _leg_decls(self, decls) -> tuple[ir.Leg, ...]:
        seen: dict[str, Span] = {}
        legs = []
        for decl in decls:
            name = decl.name.name
            if name in seen:
                raise LegError(f"leg `{name}` is declared twice", decl.name.span,
                               notes=[Note(seen[name], "first declared here")])
            seen[name] = decl.name.span
            legs.append(ir.Leg(name, self._dim_ref(decl.dim)))
        return tuple(legs)

    def _dim_ref(self, ident: ast.Ident) -> str:
        if ident.name not in self.dims:
            raise UnknownNameError(f"unknown dim `{ident.name}`", ident.span,
                                   hint=did_you_mean(ident.name, self.dims))
        return ident.name

    def _equation(self, stmt: ast.Equation, scope: _Scope, env, depth) -> None:
        local = self._path(stmt.target, env)
        try:
            indices = self._lhs_indices(stmt.indices)
            rhs = self._expr(stmt.rhs, scope, env)
        except (TnError, _Unresolved):
            self._define(scope, local, "equation", stmt.target.span, depth)
            raise
        full = self._define(scope, local, "equation", stmt.target.span, depth)
        self.equations[full] = ir.Equation(full, indices, rhs, stmt.span,
                                           instance=scope.prefix[:-1])

    def _lhs_indices(self, idents) -> tuple[str, ...]:
        seen: dict[str, Span] = {}
        for ident in idents:
            if ident.name in seen:
                raise LegError(f"leg `{ident.name}` appears twice on the left-hand side",
                               ident.span, notes=[Note(seen[ident.name], "first here")])
            seen[ident.name] = ident.span
        return tuple(i.name for i in idents)

    def _return(self, stmt: ast.Return, scope: _Scope, env, depth) -> None:
        if scope.parent is None:
            raise BlockError("`return` outside a block", stmt.span)
        if scope.returned is not None:
            raise BlockError("a block returns once", stmt.span,
                             notes=[Note(scope.returned, "first return here")])
        if depth > 0:
            raise BlockError("`return` inside a loop", stmt.span,
                             hint="rebind a name in the loop and return it after")
        scope.returned = stmt.span
        block = self.blocks[scope.block]
        rhs = self._expr(stmt.value, scope, env)
        indices = tuple(leg.name.name for leg in block.out_legs)
        full = self._define(scope, "out", "equation", stmt.span, depth)
        self.equations[full] = ir.Equation(full, indices, rhs, stmt.span,
                                           instance=scope.prefix[:-1])

    def _for_loop(self, stmt: ast.ForLoop, scope: _Scope, env, depth) -> None:
        var = stmt.var.name
        if var in env:
            raise RedefinitionError(f"loop variable `{var}` is already in use", stmt.var.span)
        start, stop = self._bound(stmt.start, env), self._bound(stmt.stop, env)
        if stop - start > MAX_STATEMENTS:
            raise ResourceError(f"loop of {stop - start:,} iterations; at most "
                                f"{MAX_STATEMENTS:,} statements are unrolled", stmt.span)
        for value in range(start, stop):
            self._statements(stmt.body, scope, {**env, var: value}, depth + 1)

    def _holds(self, stmt: ast.IfStmt, env) -> bool:
        """Whether every condition of an `if` holds: each side an exact number made of
        numbers, dims with sizes, consts and loop variables."""
        compare = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
                   ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
                   "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
        holds = True
        for c in stmt.conditions:
            left = self.scalars.value(c.left, env, "a side of an `if` condition")
            right = self.scalars.value(c.right, env, "a side of an `if` condition")
            holds = holds and bool(compare[c.op](sympy.nsimplify(left), sympy.nsimplify(right)))
        return holds

    def _bound(self, bound, env) -> int:
        if isinstance(bound, ast.Number):
            return int(bound.text)
        if bound.name in env:
            return env[bound.name]
        if bound.name not in self.dims:
            raise UnknownNameError(f"unknown loop bound `{bound.name}`", bound.span,
                                   hint=did_you_mean(bound.name, list(self.dims) + list(env)))
        size = self.sizes.get(bound.name)
        if size is None:
            raise SizeError(f"loop bound `{bound.name}` has no size", bound.span,
                            hint=f"give it one: `dim {bound.name} = 12`, or dims={{...}} "
                                 "when loading")
        return size

    def _check(self, stmt: ast.Check, scope: _Scope, env) -> None:
        label = stmt.label.name if stmt.label else f"line{stmt.span.line}"
        if env:
            label += "".join(f".{v}" for v in env.values())
        lhs = self._expr(stmt.lhs, scope, env)
        rhs = self._expr(stmt.rhs, scope, env)
        legs = self._lhs_indices(stmt.legs) if stmt.legs is not None else None
        self.checks.append(ir.Check(scope.prefix + label, lhs, rhs, explicit_legs=legs,
                                    span=stmt.span))

    # ---- names -----------------------------------------------------------------------
    def _path(self, path: ast.Path, env: Mapping[str, int]) -> str:
        parts = []
        for seg in path.segments:
            if isinstance(seg, ast.LoopVar):
                if seg.name not in env:
                    raise UnknownNameError(f"unknown loop variable `{seg.name}`", seg.span,
                                           hint=did_you_mean(seg.name, env) or
                                           ("no loop is open here" if not env else None))
                parts.append(str(env[seg.name]))
            else:
                parts.append(str(seg))
        return ".".join(parts)

    def _define(self, scope: _Scope, local: str, kind: str, span: Span, depth: int) -> str:
        full = scope.prefix + local
        if local == ir.ONES:
            raise RedefinitionError("`ones` is the built-in all-ones tensor", span,
                                    hint="choose another name")
        if local in scope.current:
            rebinding = depth > 0 and kind == "equation" and scope.kinds[local] in (
                "equation", "block input")
            if not rebinding:
                raise RedefinitionError(f"`{local}` is defined twice", span,
                                        notes=[Note(scope.defined_at[local], "first defined here")],
                                        hint=None if depth else
                                        "only a loop body may rebind a name")
            version = scope.versions.get(local, 0) + 1
            scope.versions[local] = version
            full = f"{full}@{version}"
        if full in self.taken:
            raise RedefinitionError(f"`{full}` is defined twice", span,
                                    notes=[Note(self.taken[full], "first defined here")])
        self.taken[full] = span
        scope.current[local] = full
        scope.kinds[local] = kind
        scope.defined_at.setdefault(local, span)
        return full

    def _resolve(self, path: ast.Path, scope: _Scope, env) -> str:
        local = self._path(path, env)
        if local in scope.current:
            return scope.current[local]
        if local == ir.ONES:
            return ir.ONES
        scope.pending.setdefault(local, []).append(path.span)
        return f"\0{scope.serial}\0{local}"

    def _close(self, scope: _Scope) -> None:
        """Resolve the scope's forward references now that all its names are known."""
        for local, spans in scope.pending.items():
            key = f"\0{scope.serial}\0{local}"
            if local in scope.current:
                self.placeholders[key] = scope.current[local]
            elif scope.prefix + local in self.taken:
                self.placeholders[key] = scope.prefix + local
            elif scope.parent is not None:
                parent = scope.parent
                if local in parent.current:
                    self.placeholders[key] = parent.current[local]
                else:
                    parent.pending.setdefault(local, []).extend(spans)
                    self.placeholders[key] = f"\0{parent.serial}\0{local}"
            else:
                visible = list(scope.current) + list(self.taken)
                for span in spans:
                    self.errors.add(UnknownNameError(f"unknown tensor `{local}`", span,
                                                     hint=did_you_mean(local, visible)))

    def _final_name(self, name: str) -> str | None:
        while name.startswith("\0"):
            if name not in self.placeholders:
                return None
            name = self.placeholders[name]
        return name

    def _finish(self) -> ir.Network:
        def fix(ref: ir.Ref) -> ir.Ref:
            name = self._final_name(ref.name)
            if name is None:
                raise _Unresolved
            return ref if name == ref.name else ir.Ref(name, ref.indices, ref.span)

        equations = []
        for eq in self.equations.values():
            try:
                equations.append(ir.Equation(eq.name, eq.indices, ir.map_refs(eq.rhs, fix),
                                             eq.span, instance=eq.instance))
            except _Unresolved:
                pass
        checks = []
        for check in self.checks:
            try:
                checks.append(ir.Check(check.label, ir.map_refs(check.lhs, fix),
                                       ir.map_refs(check.rhs, fix),
                                       explicit_legs=check.explicit_legs, span=check.span))
            except _Unresolved:
                pass
        return ir.Network(tuple(self.dims.values()), tuple(self.tensors.values()),
                          tuple(equations), tuple(self.instances), tuple(checks),
                          self.module.source)

    # ---- expressions -----------------------------------------------------------------
    def _expr(self, e: ast.Expr, scope: _Scope, env) -> ir.Sum:
        if isinstance(e, ast.Number):
            return _scalar(sympy.Rational(e.text), e.span)
        if isinstance(e, ast.BareName):
            return _scalar(self._bare_scalar(e, scope, env), e.span)
        if isinstance(e, ast.TensorRef):
            ref = ir.Ref(self._resolve(e.path, scope, env), tuple(i.name for i in e.indices),
                         e.span)
            return ir.Sum((ir.Term(sympy.Integer(1), (ref,), e.span),), e.span)
        if isinstance(e, ast.Binary) and e.op in "+-":
            # Walk the left spine of a long sum iteratively: `a + b + ... + z` must not
            # recurse once per term.
            operands = []
            node = e
            while isinstance(node, ast.Binary) and node.op in "+-":
                operands.append((node.op, node.right))
                node = node.left
            terms = list(self._expr(node, scope, env).terms)
            for op, operand in reversed(operands):
                value = self._expr(operand, scope, env)
                terms.extend(value.terms if op == "+" else _negate(value).terms)
            return ir.Sum(tuple(terms), e.span)
        if isinstance(e, ast.Binary) and e.op == "*":
            operands = []
            node = e
            while isinstance(node, ast.Binary) and node.op == "*":
                operands.append(node.right)
                node = node.left
            product = self._expr(node, scope, env)
            for operand in reversed(operands):
                product = _multiply(product, self._expr(operand, scope, env), e.span)
            return product
        if isinstance(e, ast.Binary) and e.op == "%":
            left, right = self._expr(e.left, scope, env), self._expr(e.right, scope, env)
            values = _scalar_value(left), _scalar_value(right)
            if None in values:
                raise LegError("`%` applies to scalars (numbers, dims, consts and loop "
                               "variables)", (e.left if values[0] is None else e.right).span)
            if values[1] == 0:
                raise TnError("division by zero", e.right.span)
            return _scalar(sympy.Mod(*values), e.span)
        if isinstance(e, ast.Binary):
            left, right = self._expr(e.left, scope, env), self._expr(e.right, scope, env)
            value = _scalar_value(right)
            if value is None:
                raise LegError("only a scalar can divide", e.right.span,
                               hint="multiply by the inverse as a tensor, or use a number "
                                    "or dim here")
            if value == 0:
                raise TnError("division by zero", e.right.span)
            return _multiply(left, _scalar(1 / value, e.right.span), e.span)
        if isinstance(e, ast.Negate):
            negations, node = 0, e
            while isinstance(node, ast.Negate):
                negations, node = negations + 1, node.operand
            value = self._expr(node, scope, env)
            return _negate(value) if negations % 2 else value
        if isinstance(e, ast.Where):
            argument = self._expr(e.argument, scope, env)
            conditions = tuple(self.scalars.condition(c, env) for c in e.conditions)
            return _factor(ir.Mask(conditions, argument, e.span), e.span)
        if isinstance(e, ast.LegBox):
            name = self._function_name(e.function)
            kind = boxes.lookup(name, e.function.span, over_legs=True)
            argument = self._expr(e.argument, scope, env)
            legs = self._lhs_indices(e.legs)
            if not legs:
                raise LegError(f"`{name}` needs at least one leg", e.span)
            if kind.parameters:
                args = _box_parameters(kind, e.options, e.span, self.scalars, env)
                return _factor(ir.Box(kind.name, legs, argument, e.span, args=args), e.span)
            eps = _box_eps(kind.name, e, self.scalars, env)
            return _factor(ir.Box(kind.name, legs, argument, e.span, eps), e.span)
        if isinstance(e, ast.Call):
            return self._call(e, scope, env)
        raise TypeError(e)  # pragma: no cover

    def _function_name(self, path: ast.Path) -> str:
        if not path.is_simple or not isinstance(path.segments[0], str):
            raise UnknownNameError(f"`{path}` is not a function or block name", path.span)
        return path.segments[0]

    def _bare_scalar(self, e: ast.BareName, scope: _Scope, env) -> sympy.Expr:
        name = str(e.path)
        if e.path.is_simple and name in env:
            return sympy.Integer(env[name])
        if e.path.is_simple and name in self.dims:
            return dimmod.symbol(name)
        if e.path.is_simple and name in self.consts:
            return self.consts[name]
        if name in scope.current or name in self.taken:
            raise LegError(f"tensor `{name}` is used without legs", e.span,
                           hint=f"write `{name}[...]` with one index per leg")
        raise UnknownNameError(f"unknown dim `{name}`", e.span,
                               hint=did_you_mean(name, list(self.dims) + list(env)))

    def _call(self, e: ast.Call, scope: _Scope, env) -> ir.Sum:
        name = self._function_name(e.function)
        if name in self.blocks:
            return self._instantiate(e, self.blocks[name], scope, env)
        if e.instance is not None or e.rename is not None:
            what = "an instance path (`as ...`)" if e.instance is not None else "renamed legs"
            raise BlockError(f"only a block call takes {what}; `{name}` is not a block",
                             e.span, hint=did_you_mean(name, self.blocks))
        kind = boxes.BOXES.get(boxes.ALIASES.get(name, name))
        parameters = kind.parameters if kind is not None and not kind.over_legs else ()
        if len(e.arguments) != 1 + len(parameters):
            if parameters:
                raise TnError(f"`{name}` takes a tensor and {', '.join(parameters)}: "
                              f"{boxes.parameter_rule(kind)}", e.span)
            raise TnError(f"`{name}` takes one argument, got {len(e.arguments)}", e.span)
        argument = self._expr(e.arguments[0], scope, env)
        if name in boxes.SCALAR_FUNCTIONS:
            value = _scalar_value(argument)
            if value is None:
                raise LegError(f"`{name}` applies to scalars (numbers and dims)",
                               e.arguments[0].span)
            return _scalar(sympy.sqrt(value), e.span)
        if name not in boxes.BOXES and name not in boxes.ALIASES:
            candidates = list(boxes.BOXES) + list(self.blocks) + list(boxes.SCALAR_FUNCTIONS)
            hint = did_you_mean(name, candidates)
            raise UnknownNameError(f"unknown function or block `{name}`", e.function.span,
                                   hint=hint or "element-wise boxes: " + ", ".join(
                                       k for k, v in boxes.BOXES.items() if not v.over_legs)
                                   + (("; blocks: " + ", ".join(self.blocks))
                                      if self.blocks else ""))
        kind = boxes.lookup(name, e.function.span, over_legs=False)
        if _scalar_value(argument) is not None:
            raise LegError(f"`{name}` is applied to a number; boxes apply to tensors",
                           e.arguments[0].span)
        args = _box_parameters(kind, e.arguments[1:], e.span, self.scalars, env)
        return _factor(ir.Box(kind.name, (), argument, e.span, args=args), e.span)

    def _instantiate(self, e: ast.Call, block: ast.BlockDef, scope: _Scope, env) -> ir.Sum:
        name = block.name.name
        if e.instance is None:
            raise BlockError(f"a call of block `{name}` needs an instance path", e.span,
                             hint=f"write `{name}(...) as some.path`; params are named under it")
        if name in self.block_stack:
            chain = " → ".join(self.block_stack[self.block_stack.index(name):] + [name])
            raise BlockError(f"block `{name}` instantiates itself: {chain}", e.span)
        if len(self.block_stack) >= MAX_BLOCK_DEPTH:
            raise ResourceError(f"blocks nested more than {MAX_BLOCK_DEPTH} deep", e.span)
        if len(e.arguments) != len(block.params):
            expected = ", ".join(p.name.name for p in block.params)
            raise BlockError(f"block `{name}` takes {len(block.params)} argument"
                             f"{'s' if len(block.params) != 1 else ''} ({expected}), "
                             f"got {len(e.arguments)}", e.span,
                             notes=[Note(block.name.span, "defined here")])
        path = scope.prefix + self._path(e.instance, env)
        if path in self.taken:
            raise RedefinitionError(f"instance path `{path}` is used twice", e.instance.span,
                                    notes=[Note(self.taken[path], "first used here")])
        self.taken[path] = e.instance.span

        # Every argument becomes an equation `path.input`, so the block's inputs are
        # reachable by path (hooks, figures) whatever the caller passed. A bare tensor
        # name binds positionally; an expression binds by its free legs' names.
        bindings = []
        for param, arg in zip(block.params, e.arguments):
            legs = self._leg_decls(param.legs)
            indices = tuple(leg.name for leg in legs)
            if isinstance(arg, ast.BareName) and not self._is_scalar_name(arg, env):
                ref = ir.Ref(self._resolve(arg.path, scope, env), indices, arg.span)
                rhs = _factor(ref, arg.span)
            else:
                rhs = self._expr(arg, scope, env)
            tensor = f"{path}.{param.name.name}"
            if tensor in self.taken:
                raise RedefinitionError(f"`{tensor}` is defined twice", arg.span,
                                        notes=[Note(self.taken[tensor], "first defined here")])
            self.taken[tensor] = arg.span
            self.equations[tensor] = ir.Equation(tensor, indices, rhs, arg.span, instance=path)
            bindings.append(ir.Binding(param.name.name, tensor, legs))

        inner = self._new_scope(path + ".", scope if scope.parent is None else scope.parent,
                                name)
        for binding, param in zip(bindings, block.params):
            inner.current[binding.input] = binding.tensor
            inner.kinds[binding.input] = "block input"
            inner.defined_at[binding.input] = param.name.span
        self.block_stack.append(name)
        try:
            self._statements(block.body, inner, {}, 0)
        finally:
            self.block_stack.pop()
        self._close(inner)
        if inner.returned is None:
            raise BlockError(f"block `{name}` has no `return`", block.name.span)
        out_legs = self._leg_decls(block.out_legs)
        output = inner.current.get("out")
        if output is None:  # the return statement failed and was reported
            raise _Unresolved
        self.instances.append(ir.Instance(path, name, tuple(bindings), output, out_legs,
                                          e.span))
        indices = tuple(leg.name for leg in out_legs)
        if e.rename is not None:
            if len(e.rename) != len(out_legs):
                raise LegError(f"block `{name}` returns {len(out_legs)} legs, "
                               f"{len(e.rename)} names given", e.span)
            indices = tuple(i.name for i in e.rename)
        return _factor(ir.Ref(output, indices, e.span), e.span)

    def _is_scalar_name(self, arg: ast.BareName, env) -> bool:
        return arg.path.is_simple and (str(arg.path) in env or str(arg.path) in self.dims)


# ---- expression algebra helpers ---------------------------------------------------------

def _box_parameters(kind: boxes.BoxKind, given, span: Span, scalars: Scalars, env
                    ) -> tuple[float, ...]:
    """A box's real-valued parameters (`softcap(x, 30)`, `topk[x](g, K)`): numbers, dims
    and consts, each checked against its rule."""
    if len(given) != len(kind.parameters):
        raise TnError(f"`{kind.name}` takes a tensor and {', '.join(kind.parameters)}: "
                      f"{boxes.parameter_rule(kind)}", span)
    values = []
    for name, e in zip(kind.parameters, given):
        value = scalars.real(e, env, f"the {name} of `{kind.name}`")
        if not value > 0 or value == float("inf"):
            raise SizeError(f"the {name} of `{kind.name}` must be a positive number, "
                            f"not {value:g}", e.span)
        if name == "k" and value != int(value):
            raise SizeError(f"the k of `{kind.name}` must be a whole number, not {value:g}",
                            e.span)
        values.append(value)
    return tuple(values)


def _box_eps(function: str, e: ast.LegBox, scalars: Scalars, env) -> float | None:
    """`rmsnorm[m](x, 1e-6)`: a norm's second argument is its eps."""
    if not e.options:
        return None
    if function not in ("layernorm", "rmsnorm") or len(e.options) > 1:
        raise TnError(f"`{function}` takes one argument" if function not in
                      ("layernorm", "rmsnorm") else f"`{function}` takes an argument and an eps",
                      e.options[0].span)
    eps = scalars.real(e.options[0], env, f"the eps of `{function}`")
    if eps <= 0:
        raise SizeError(f"the eps of `{function}` must be positive, not {eps:g}",
                        e.options[0].span)
    return eps


def _scalar(value: sympy.Expr, span: Span) -> ir.Sum:
    return ir.Sum((ir.Term(sympy.sympify(value), (), span),), span)


def _factor(factor: ir.Factor, span: Span) -> ir.Sum:
    return ir.Sum((ir.Term(sympy.Integer(1), (factor,), span),), span)


def _scalar_value(expr: ir.Sum) -> sympy.Expr | None:
    if all(not term.factors for term in expr.terms):
        return sympy.Add(*(term.coefficient for term in expr.terms))
    return None


def _negate(expr: ir.Sum) -> ir.Sum:
    return ir.Sum(tuple(ir.Term(-t.coefficient, t.factors, t.span) for t in expr.terms),
                  expr.span)


def _as_term(expr: ir.Sum) -> tuple[sympy.Expr, tuple[ir.Factor, ...]]:
    """A coefficient and factors: a sum of several terms becomes one bracketed factor."""
    value = _scalar_value(expr)
    if value is not None:
        return value, ()
    if len(expr.terms) == 1:
        return expr.terms[0].coefficient, expr.terms[0].factors
    return sympy.Integer(1), (expr,)


def _multiply(left: ir.Sum, right: ir.Sum, span: Span) -> ir.Sum:
    cl, fl = _as_term(left)
    cr, fr = _as_term(right)
    return ir.Sum((ir.Term(bounded_coefficient(cl * cr, span), fl + fr, span),), span)
