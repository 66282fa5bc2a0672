"""Lowering of equations to PyTorch statements, for one generated function body.

Layout conventions of the generated code:
- a param is stored with its legs in declared order; an input likewise, after any
  leading batch dimensions (a model written for one sequence runs on a batch); an
  equation's value has its left-hand-side legs in order, after the batch dimensions;
- a one-hot input is passed as integer ids (its one-hot leg left out) and is turned
  into an embedding lookup (`W_E[tokens]`) where it meets a param, a one-hot matrix
  only where it cannot;
- every product term is emitted as the pairwise contractions planned at compile time
  (`tndsl.passes.plan`), each one matmul / `F.linear` / `torch.einsum` on two operands;
- `ones[...]` is never materialised: a leg only `ones` has is broadcast.

Names from the `.tn` file reach the code only as identifiers made by
`codegen.names.Namespace` or as `repr()` string literals.
"""
from __future__ import annotations

import math
import re

from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import sympy

from tndsl.lang import dims as dimmod, ir, printer
from tndsl.codegen import decode as decode_code, fixed as fixed_forms
from tndsl.codegen.names import Namespace
from tndsl.codegen.precedence import as_left_factor, as_primary, as_right_factor
from tndsl.lang.errors import SizeError, TnError
from tndsl.passes.plan import check_budget, plan_term
from tndsl.lang.text import python_comment

# Unsized dims (read from the inputs at run time) are planned as if this large.
PLANNING_SIZE = 128
EPS = 1e-5  # layernorm / rmsnorm, as GPT-2
SUM_CHUNK = 64  # terms added in one Python expression

ELEMENTWISE = {
    "relu": "torch.relu({})",
    "gelu": "F.gelu({})",
    "gelu_tanh": "F.gelu({}, approximate='tanh')",
    "gelu_bloom": "_gelu_bloom({})",
    "tanh": "torch.tanh({})",
    "sigmoid": "torch.sigmoid({})",
    "silu": "F.silu({})",
    "exp": "torch.exp({})",
    "identity": "{}",
    "step": "torch.relu(torch.sign({}))",
}


@dataclass
class Options:
    """What every function body of one generated file shares."""

    sizes: Mapping[str, int | None]
    optimizer: str
    memory_budget: int
    varying: frozenset[str]          # sized dims read from the inputs (at most the size)
    passes: frozenset[str]
    helpers: set[str] = field(default_factory=set)


@dataclass
class Value:
    var: str
    batched: bool            # may carry leading batch dims (depends on an input)
    onehot: int | None = None  # for a one-hot input: the position of its one-hot leg
    fixed: ir.Tensor | None = None  # a fixed tensor: applied by codegen.fixed, never built


@dataclass
class _Operand:
    var: str
    indices: list[str]
    batched: bool
    size: int                # entries (planning sizes), to place the coefficient


class Lowering:
    """Statements of one function body (`lines`, indentation relative to the body)."""

    def __init__(self, options: Options, ns: Namespace):
        self.options = options
        self.sizes = options.sizes
        self.optimizer = options.optimizer
        self.memory_budget = options.memory_budget
        self.helpers = options.helpers
        self.ns = ns
        self.values: dict[str, Value] = {}
        self.runtime_dims: dict[str, str] = {}  # dim read at run time -> its variable
        self.dim_reads: dict[str, int] = {}     # that variable -> the line reading it
        self.index_dims: dict[str, str] = {}     # of the equation being generated
        self.temporaries: set[str] = set()
        self.lines: list[str] = []
        self.indent = 0
        self.params: dict[str, str] = {}  # read (`self.W_Q`) -> the param it is, unsliced
        self.param_reads: set[str] = set()  # every param read, sliced or not: used in place
        # (param, order) per GEMM that merges a param's permuted legs: for passes.layout
        self.weight_merges: list[tuple[str, tuple[int, ...]]] = []
        self.linear = None  # the last term's final matmul, if it was one (for bias fusion)
        # Incremental decoding (codegen.decode): the plan, this class's path, the cache
        # argument's name (None: this class takes no cache), the equation being lowered.
        self.decode, self.path, self.cache, self.current = None, "", None, ""
        # name -> the value at every position so far, where a cached value is also read
        # at the new positions only (and so keeps its own variable for those)
        self.all_values: dict[str, Value] = {}
        self.bias = None    # the last term, if it was a broadcast param (a bias)

    def decoding(self, plan, path: str, cache: str) -> None:
        self.decode, self.path, self.cache = plan, path, cache

    def position_role(self, index: str) -> str | None:
        """`new` / `all` for a position index of the equation being lowered (None: not a
        position, or no decoding in this class)."""
        if self.cache is None:
            return None
        name = f"{self.path}.{self.current}" if self.path else self.current
        return self.decode.role(name, index)

    def at_new_positions(self, index: str, keyword: bool = False) -> str:
        """The extra argument a position helper takes for `index`: the cache where the
        index runs over this call's new positions (`cache=cache` if `keyword`)."""
        if self.position_role(index) != "new":
            return ""
        return f", cache={self.cache}" if keyword else f", {self.cache}"

    @staticmethod
    def hooked(*hook_points: str) -> str:
        """The condition for computing a value a fused kernel would skip: a hook would
        run on one of these hook points."""
        return " or ".join(f"{h}.hooked" for h in hook_points)

    def through_hook(self, var: str, hook: str | None) -> None:
        """`var = hook(var)`: the value passes through its hook point (code `hook`)."""
        if hook:
            self.emit(f"{var} = {hook}({var})")

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.indent + line)

    def body(self) -> list[str]:
        """The lines, less the run-time dim reads nothing uses."""
        unused = set()
        for name, at in self.dim_reads.items():
            word = re.compile(rf"\b{re.escape(name)}\b")
            if not any(word.search(line) for k, line in enumerate(self.lines)
                       if k != at and not line.lstrip().startswith("#")):
                unused.add(at)
        return [line for k, line in enumerate(self.lines) if k not in unused]

    # ---- bindings --------------------------------------------------------------------
    def read_dims(self, var: str, legs: Sequence[ir.Leg]) -> None:
        """Variables for the run-time dims among `legs` (the value's trailing legs)."""
        for k, leg in enumerate(legs):
            if self.is_runtime(leg.dim) and leg.dim not in self.runtime_dims:
                name = self.ns(f"dim:{leg.dim}", leg.dim)
                self.runtime_dims[leg.dim] = name
                self.emit(f"{name} = {var}.shape[{k - len(legs)}]")
                self.dim_reads[name] = len(self.lines) - 1

    def is_runtime(self, dim: str) -> bool:
        return self.sizes.get(dim) is None or dim in self.options.varying

    def equation(self, eq: ir.Equation, var: str, hook: str | None,
                 renamed: str | None = None) -> None:
        """`var = <eq's value>`, then through its hook point (code `hook`, if any).
        `renamed`: the value eq copies, if nothing else reads it; where the statement
        just emitted assigned it, that statement assigns `var` instead."""
        self.index_dims = {leg.name: leg.dim for leg in eq.index_dims}
        self.current = eq.name
        comment = f"# {python_comment(printer.equation_line(eq))}"
        value = self.values.get(renamed) if renamed is not None else None
        prefix = "    " * self.indent + f"{value.var} = " if value is not None else None
        if value is not None and value.var.isidentifier() and self.lines and \
                self.lines[-1].startswith(prefix) and value.var not in self.dim_reads:
            statement = self.lines.pop()
            self.emit(comment)
            self.emit(f"{var} = {statement[len(prefix):]}")
            self.temporaries.discard(value.var)
            self.through_hook(var, hook)
            self.values[eq.name] = Value(var, value.batched)
            return
        self.emit(comment)
        expr, batched = self._sum(eq.rhs, eq.indices, eq.name, eq.span)
        last = self.lines[-1] if self.lines else ""
        prefix = "    " * self.indent + f"{expr} = "
        if expr in self.temporaries and last.startswith(prefix):
            # `t = code; var = t`: the value is assigned to its own name at once.
            self.temporaries.discard(expr)
            self.lines[-1] = "    " * self.indent + f"{var} = {last[len(prefix):]}"
        else:
            self.emit(f"{var} = {expr}")
        self.through_hook(var, hook)
        self.values[eq.name] = Value(var, batched)

    def _sum(self, expr: ir.Sum, layout: Sequence[str], hint: str, span
             ) -> tuple[str, bool]:
        """Code for a sum with its legs in `layout` order (after batch dims)."""
        parts, missing_everywhere, batched = [], set(layout), False
        linears, biases = [], []
        for term in expr.terms:
            code, missing, term_batched = self._term(term, tuple(layout), hint, span)
            parts.append(code)
            linears.append(self.linear)
            biases.append(self.bias)
            missing_everywhere &= missing
            batched |= term_batched
        fused = _fuse_bias(parts, linears, biases)
        if fused is not None:
            parts, missing_everywhere = fused, set()
        # Python's compiler recurses on a long `a + b + ...`: add in chunks.
        while len(parts) > SUM_CHUNK:
            parts = [self._temp(hint, " + ".join(parts[:SUM_CHUNK]))] + parts[SUM_CHUNK:]
        code = " + ".join(parts)
        if missing_everywhere:
            # Every term lacks these legs (they come from `ones` only): make them real.
            sizes = ", ".join(self._size_code(self._dim_of(i)) for i in layout)
            tmp = self._temp(hint, code)
            code = f"torch.broadcast_to({tmp}, {tmp}.shape[:{tmp}.dim() - {len(layout)}] + ({sizes},))"
        return code, batched

    def _term(self, term: ir.Term, layout: tuple[str, ...], hint: str, span
              ) -> tuple[str, set[str], bool]:
        coefficient = term.coefficient
        operands: list[_Operand] = []
        onehots: list[tuple[ir.Ref, Value]] = []
        fixeds: list[tuple[ir.Ref, ir.Tensor]] = []
        ones: set[str] = set()
        for k, factor in enumerate(term.factors):
            if isinstance(factor, ir.Ref):
                if factor.name == ir.ONES:
                    ones.update(factor.indices)
                    continue
                value = self.values[factor.name]
                if factor.name in self.all_values and any(
                        self.position_role(i) == "all" for i in factor.indices):
                    value = self.all_values[factor.name]  # cached and new positions
                if value.fixed is not None:
                    fixeds.append((factor, value.fixed))
                    continue
                if value.onehot is not None:
                    onehots.append((factor, value))
                    continue
                operands.append(self._operand(value.var, list(factor.indices), value.batched))
            else:
                free = ir.free_legs(factor, ir.outside_of(term, k, set(layout)))
                # Lay it out as the result is, so a lone box needs no transposes.
                legs = tuple(i for i in layout if i in free) + \
                    tuple(i for i in free if i not in layout)
                code, legs, batched = self._composite(factor, legs, hint, span)
                operands.append(self._operand(code, legs, batched))
        for ref, value in onehots:
            operands = self._onehot(ref, value, operands, layout, hint)
        for ref, tensor in fixeds:
            operands = fixed_forms.lower(self, ref, tensor, operands, layout, hint)
        counts = Counter(i for op in operands for i in op.indices)
        # Multiplying by ones changes nothing where another operand has the leg; a leg
        # only ones has is free (the checker refuses any other) and is broadcast.
        missing = {index for index in ones if not counts[index]}
        if not operands:
            raise TnError("a term made only of `ones` and numbers is not supported by the "
                          "compiler yet", term.span or span)
        target = [i for i in layout if i not in missing]
        batched = any(op.batched for op in operands)
        # Composites above may have set these while generating their own sums.
        self.linear = self.bias = None
        if missing and len(operands) == 1 and not batched and coefficient == 1 \
                and list(operands[0].indices) == target:
            self.bias = (operands[0].var, tuple(target))  # a param broadcast: fusable bias
        code = self._contract(operands, target, coefficient, hint, span)
        if missing:
            self.linear = None
            code = self._temp(hint, code) + "[..., " + ", ".join(
                "None" if i in missing else ":" for i in layout) + "]"
        return code, missing, batched

    def float_value(self, operands=()) -> str | None:
        """Code for a float tensor in scope (an operand, else any value), whose dtype and
        device a tensor built here takes: a float64 model must not compute in float32."""
        return next((as_primary(v.var) for v in [*operands, *self.values.values()]
                     if getattr(v, "onehot", None) is None and getattr(v, "fixed", None) is None
                     and v.var), None)

    def _operand(self, var: str, indices: list[str], batched: bool) -> _Operand:
        size = 1
        for index in indices:
            size *= self._plan_size(index)
        return _Operand(var, indices, batched, size)

    def _onehot(self, ref: ir.Ref, value: Value, operands: list[_Operand],
                layout: tuple[str, ...], hint: str) -> list[_Operand]:
        leg = ref.indices[value.onehot]
        rest = [i for k, i in enumerate(ref.indices) if k != value.onehot]
        partners = [op for op in operands if leg in op.indices]
        if (leg not in layout and leg not in rest and len(partners) == 1
                and partners[0].indices.count(leg) == 1 and not partners[0].batched):
            partner = partners[0]
            position = partner.indices.index(leg)
            table = as_primary(partner.var) + ("" if position == 0 else f".movedim({position}, 0)")
            gathered = f"{table}[{value.var}]"  # an operand: used once
            indices = rest + [i for i in partner.indices if i != leg]
            return [op for op in operands if op is not partner] + \
                [_Operand(gathered, indices, True, partner.size)]
        # Else any float value in scope: a float64 model must not compute in float32.
        like = self.float_value(operands)
        dtype = f"{like}.dtype" if like else "torch.get_default_dtype()"
        size = self._size_code(self._dim_of(leg))
        onehot = self._temp(hint, f"F.one_hot({value.var}, {size}).to({dtype})")
        return operands + [_Operand(onehot, rest + [leg], True, self._plan_size(leg))]

    # ---- contraction -----------------------------------------------------------------
    def _contract(self, operands: list[_Operand], target: list[str], coefficient,
                  hint: str, span) -> str:
        letters = self._letters(operands, target, span)
        if coefficient != 1:
            smallest = min(range(len(operands)), key=lambda k: operands[k].size)
            op = operands[smallest]
            operands = list(operands)
            # A bracketed sum arrives as `a + b`, a symbolic coefficient as `N + 1`:
            # bracket either where grouping would otherwise change.
            scaled = f"({as_left_factor(self._scalar_code(coefficient))} * {as_right_factor(op.var)})"
            operands[smallest] = _Operand(scaled, op.indices, op.batched, op.size)
        specs = ["".join(letters[i] for i in op.indices) for op in operands]
        output = "".join(letters[i] for i in target)
        check_budget(output, {letters[i]: self._plan_size(i) for i in letters},
                     self.memory_budget, f"`{hint}`", span)
        if len(operands) == 1:
            if specs[0] == output:
                return operands[0].var
            return f"torch.einsum({('...' + specs[0] + '->...' + output)!r}, {operands[0].var})"
        # Several steps: each operand computed once, first; one step: each read in place.
        operands = [_Operand(self._temp(hint, op.var) if len(operands) > 2 else
                             as_primary(op.var), op.indices, op.batched, op.size)
                    for op in operands]
        if len(operands) == 2 and _elementwise(specs, output):
            return " * ".join(_broadcast_view(op, spec, output)
                              for op, spec in zip(operands, specs))
        sizes = {letters[i]: self._plan_size(i) for i in letters}
        plan = plan_term(specs, output, sizes, optimizer=self.optimizer,
                         memory_budget=self.memory_budget, where=f"`{hint}`", span=span)
        current = [(op.var, op.batched) for op in operands]
        code = ""
        for n, step in enumerate(plan.steps):
            (first, first_batched) = current.pop(step.take[0])
            (second, second_batched) = current.pop(step.take[1])
            inputs, result = step.spec.split("->")
            a, b = inputs.split(",")
            code = self._matmul(first, a, first_batched, second, b, second_batched, result,
                                letters, last=n == len(plan.steps) - 1)
            if code is None:
                code = f"torch.einsum({f'...{a},...{b}->...{result}'!r}, {first}, {second})"
            if n < len(plan.steps) - 1:
                current.append((self._temp(hint, code), first_batched or second_batched))
        return code

    def _matmul(self, x, xs, x_batched, w, ws, w_batched, out, letters, *, last) -> str | None:
        """`x @ w` when the step is a plain matrix product of an activation (or anything)
        with an unbatched tensor: torch.einsum would permute and copy for the same bmm."""
        for (x, xs, xb), (w, ws, wb) in (((x, xs, x_batched), (w, ws, w_batched)),
                                         ((w, ws, w_batched), (x, xs, x_batched))):
            if wb or len(set(xs)) != len(xs) or len(set(ws)) != len(ws):
                continue
            k = [c for c in xs if c in ws and c not in out]
            m = [c for c in xs if c not in ws]
            nn_ = [c for c in ws if c not in xs]
            if not k or any(c in ws and c in out for c in xs):
                continue  # nothing contracted, or a shared batch leg: not a matmul
            if xs != "".join(m + k) or out != "".join(m + nn_):
                continue
            names = {c: name for name, c in letters.items()}
            if any(self.is_runtime(self._dim_of(names[c])) for c in k + nn_):
                continue  # reshapes need the sizes at compile time
            sizes = {c: self._plan_size(name) for name, c in letters.items()}
            kp = math.prod(sizes[c] for c in k)
            np_ = math.prod(sizes[c] for c in nn_)
            left = x if len(k) == 1 else f"{x}.flatten(-{len(k)})"
            # x is a vector (at least without batch dims): `torch.mv` where it has none.
            vector = not m and len(k) == 1
            if nn_ and ws == "".join(nn_ + k):
                # Stored as (out, in), which is F.linear's layout: no permute, and a
                # reshape only to merge legs (a view of the contiguous param).
                weight_t = w if len(k) == 1 and len(nn_) == 1 else f"{w}.reshape({np_}, {kp})"
                code = f"torch.mv({weight_t}, {left})" if vector and not xb else None
            else:
                want = "".join(k + nn_)
                weight = w
                if ws != want:
                    perm = tuple(ws.index(c) for c in want)
                    weight = f"{w}.permute{perm}"
                if len(k) > 1 or len(nn_) > 1 or ws != want:
                    if ws != want and (len(k) > 1 or len(nn_) > 1) and w in self.params:
                        self.weight_merges.append((self.params[w], perm))
                    # Nothing left on the weight's side: a vector, so `@` drops the dim.
                    weight = f"{weight}.reshape({kp}, {np_})" if nn_ else f"{weight}.reshape({kp})"
                weight_t = f"{weight}.t()"
                code = f"{left} @ {weight}" if vector or not nn_ else None
            if code is None:  # a matrix times a weight: one linear layer
                self.helpers.add("_linear")
                code = f"_linear({left}, {weight_t})"
            # (A vector's product has no leg a broadcast bias could add: never fused.)
            if last and nn_ and not vector:
                self.linear = (left, weight_t, tuple(names[c] for c in nn_),
                               tuple(sizes[c] for c in nn_))
            if len(nn_) > 1:  # `x @ W.reshape(..)` bracketed: `.unflatten` binds tighter than `@`
                code = f"{as_primary(code)}.unflatten(-1, {tuple(sizes[c] for c in nn_)})"
            return code
        return None

    def _letters(self, operands, target, span) -> dict[str, str]:
        names = sorted({i for op in operands for i in op.indices} | set(target))
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
        if len(names) > len(alphabet):
            raise TnError(f"a term with {len(names)} distinct indices; torch.einsum allows "
                          f"{len(alphabet)}", span)
        letters: dict[str, str] = {}
        for name in names:  # an index named by one letter keeps it: readable specs
            if len(name) == 1 and name in alphabet and name not in letters.values():
                letters[name] = name
        free = iter(c for c in alphabet if c not in letters.values())
        for name in names:
            if name not in letters:
                letters[name] = next(free)
        return letters

    # ---- boxes and masks -------------------------------------------------------------
    def _composite(self, factor, legs: tuple[str, ...], hint: str, span
                   ) -> tuple[str, list[str], bool]:
        if isinstance(factor, ir.Sum):
            code, batched = self._sum(factor, legs, hint, span)
            return code, list(legs), batched
        if isinstance(factor, ir.Mask):
            code, batched = self._sum(factor.argument, legs, hint, span)
            tmp = self._temp(hint, code)
            keep = self._keep(factor.conditions, tmp, legs)
            return f"{tmp}.masked_fill(~({keep}), 0.0)", list(legs), batched
        if not factor.legs:
            code, batched = self._sum(factor.argument, legs, hint, span)
            if factor.function == "softcap":  # c · tanh(x / c); not SDPA-fusable
                cap = repr(float(factor.args[0]))
                return f"({cap} * torch.tanh({as_left_factor(code)} / {cap}))", list(legs), \
                    batched
            if factor.function == "gelu_bloom":
                self.helpers.add("_gelu_bloom")
            return ELEMENTWISE[factor.function].format(code), list(legs), batched
        layout = [i for i in legs if i not in factor.legs] + list(factor.legs)
        k = len(factor.legs)
        mask = _direct_mask(factor.argument)
        if factor.function == "softmax" and mask is not None:
            self.helpers.add("_masked_softmax")
            code, batched = self._sum(mask.argument, layout, hint, span)
            tmp = self._temp(hint, code)
            keep = self._keep(mask.conditions, tmp, layout)
            return f"_masked_softmax({tmp}, {keep}, {k})", layout, batched
        code, batched = self._sum(factor.argument, layout, hint, span)
        if factor.function == "softmax":
            if k == 1:
                return f"torch.softmax({code}, dim=-1)", layout, batched
            self.helpers.add("_softmax")
            return f"_softmax({code}, {k})", layout, batched
        if factor.function == "topk":
            self.helpers.add("_top_k")
            return f"_top_k({code}, {int(factor.args[0])}, {k})", layout, batched
        if factor.function == "normalize":
            tmp = self._temp(hint, code)
            dims = tuple(range(-k, 0))
            return f"{tmp} / {tmp}.sum(dim={dims}, keepdim=True)", layout, batched
        if factor.function == "layernorm":
            shape = "".join(f"{self._size_code(self._dim_of(i))}, " for i in factor.legs)
            eps = EPS if factor.eps is None else factor.eps
            return f"F.layer_norm({code}, ({shape.rstrip(' ')}), eps={eps!r})", layout, batched
        if factor.function == "rmsnorm":
            self.helpers.add("_rmsnorm")
            eps = EPS if factor.eps is None else factor.eps
            return f"_rmsnorm({code}, {k}, {eps!r})", layout, batched
        raise TnError(f"the compiler has no implementation of box `{factor.function}`",
                      factor.span)

    def _keep(self, conditions, var: str, layout: Sequence[str]) -> str:
        self.helpers.add("_positions")
        parts = []
        pairs = []
        for cond in conditions:
            left = f"_positions({var}, {layout.index(cond.left) - len(layout)}" \
                   f"{self.at_new_positions(cond.left)})"
            right = f"_positions({var}, {layout.index(cond.right) - len(layout)}" \
                    f"{self.at_new_positions(cond.right)})"
            if cond.offset != 0:  # a varying dim in it is read at run time
                right = f"({right} + {self._scalar_code(cond.offset)})"
            parts.append(f"({left} {cond.op} {right})")
            for a, b in ((cond.left, cond.right), (cond.right, cond.left)):
                if self.position_role(a) == "all" and self.position_role(b) == "new":
                    pairs.append((a, b))
        if pairs:  # keys of a decoding call: never a row's left padding
            self.helpers.update(decode_code.NEEDS["_unpadded"])
            key, query = pairs[0]
            parts.append(f"_unpadded({self.cache}, {var}, {layout.index(key) - len(layout)}, "
                         f"{layout.index(query) - len(layout)})")
        return " & ".join(parts)

    # ---- sizes, scalars, temporaries -------------------------------------------------
    def _dim_of(self, index: str) -> str:
        return self.index_dims[index]

    def _plan_size(self, index: str) -> int:
        size = self.sizes.get(self._dim_of(index))
        return size if size is not None else PLANNING_SIZE

    def _size_code(self, dim: str) -> str:
        size = self.sizes.get(dim)
        if size is not None and dim not in self.options.varying:
            return str(size)
        if dim not in self.runtime_dims:
            raise SizeError(f"dim `{dim}` has no size and no input has a leg of it")
        return self.runtime_dims[dim]

    def _scalar_code(self, value: sympy.Expr) -> str:
        fixed = {d: s for d, s in self.sizes.items() if d not in self.options.varying}
        value = dimmod.evaluate(value, fixed)
        if not value.free_symbols:
            return repr(float(value))
        names = {}
        for symbol in value.free_symbols:
            names[symbol] = sympy.Symbol(self._size_code(symbol.name))
        return sympy.pycode(value.subs(names), fully_qualified_modules=True)

    def _temp(self, hint: str, code: str) -> str:
        if code.isidentifier() or code in self.param_reads:
            return code
        var = self.ns.fresh(hint.rsplit(".", 1)[-1] if "." in hint else hint)
        self.temporaries.add(var)
        self.emit(f"{var} = {code}")
        return var


def _elementwise(specs: list[str], output: str) -> bool:
    """Nothing is summed and each operand's legs are in the result's order: a broadcast
    product, which `*` does without einsum's permutes and copies."""
    used = set("".join(specs))
    if used != set(output):
        return False
    return all(len(set(spec)) == len(spec) and
               [output.index(c) for c in spec] == sorted(output.index(c) for c in spec)
               for spec in specs)


def _broadcast_view(operand: _Operand, spec: str, output: str) -> str:
    index = [":" if c in spec else "None" for c in output]
    if not operand.batched:  # broadcasting aligns trailing dims; leading Nones are implied
        while index and index[0] == "None":
            index.pop(0)
    if all(i == ":" for i in index):
        return operand.var
    return f"{operand.var}[..., {', '.join(index)}]"


def _fuse_bias(parts, linears, biases) -> list[str] | None:
    """`x @ W + b * ones[...]` → `F.linear(x, W.t(), b)` (the weight is kept (out, in)): one addmm, no separate pass
    over the result to add the bias."""
    for i, linear in enumerate(linears):
        if linear is None:
            continue
        for j, bias in enumerate(biases):
            if bias is None or j == i:
                continue
            left, weight, out_legs, out_sizes = linear
            var, legs = bias
            if legs != out_legs:
                continue
            flat_bias = var if len(legs) == 1 else f"{var}.reshape(-1)"
            code = f"_linear({left}, {weight}, {flat_bias})"
            if len(out_legs) > 1:
                code = f"{code}.unflatten(-1, {out_sizes})"
            rest = [p for k, p in enumerate(parts) if k not in (i, j)]
            return [code] + rest
    return None


def _direct_mask(argument: ir.Sum) -> ir.Mask | None:
    """The mask if a box's argument is exactly one, unscaled: `softmax[s](x where s <= p)`."""
    if len(argument.terms) != 1:
        return None
    term = argument.terms[0]
    if term.coefficient == 1 and len(term.factors) == 1 and isinstance(term.factors[0], ir.Mask):
        return term.factors[0]
    return None
