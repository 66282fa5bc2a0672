"""Checked IR → a standalone, readable PyTorch module (Python source), and the module.

Layout conventions of the generated code:
- a param is stored with its legs in declared order; an input likewise, after any
  leading batch dimensions (a model written for one sequence runs on a batch); an
  equation's value has its left-hand-side legs in order, after the batch dimensions;
- a one-hot input is passed as integer ids (its one-hot leg left out) and is turned
  into an embedding lookup (`W_E[tokens]`) where it meets a param, a one-hot matrix
  only where it cannot;
- every product term is emitted as the pairwise contractions planned at compile time
  (`tndsl.passes.plan`), each one `torch.einsum` on two operands;
- `ones[...]` is never materialised: a leg only `ones` has is broadcast.

The generated file imports torch only. Names from the `.tn` file reach it only as
identifiers made by `codegen.names.Namespace` or as `repr()` string literals.
"""
from __future__ import annotations

import linecache
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import sympy
from torch import nn

from tndsl import __version__, dims as dimmod, inits, ir, printer
from tndsl.codegen import fixed as fixed_forms
from tndsl.codegen.names import Namespace, class_name as make_class_name
from tndsl.codegen.precedence import as_left_factor, as_primary, as_right_factor
from tndsl.errors import SizeError, TnError
from tndsl.passes.plan import DEFAULT_MEMORY_BUDGET, check_budget, check_entries, plan_term
from tndsl.text import python_comment, python_docstring, python_string

# Unsized dims (read from the inputs at run time) are planned as if this large.
PLANNING_SIZE = 128
EPS = 1e-5  # layernorm / rmsnorm, as GPT-2
SUM_CHUNK = 64  # terms added in one Python expression

ELEMENTWISE = {
    "relu": "torch.relu({})",
    "gelu": "F.gelu({})",
    "gelu_tanh": "F.gelu({}, approximate='tanh')",
    "tanh": "torch.tanh({})",
    "sigmoid": "torch.sigmoid({})",
    "silu": "F.silu({})",
    "exp": "torch.exp({})",
    "identity": "{}",
}

# Helpers the generated module defines, emitted only when used.
HELPERS = {
    "_param": '''
def _param(module, path, shape, init, args):
    """Register an nn.Parameter under a dotted path, creating containers on the way."""
    *parents, leaf = path.split(".")
    for part in parents:
        if part not in module._modules:
            module.add_module(part, nn.Module())
        module = module._modules[part]
    tensor = torch.empty(shape)
    with torch.no_grad():
        if init == "normal":
            mean, std = args if len(args) == 2 else (0.0, args[0] if args else 0.02)
            tensor.normal_(mean, std)
        elif init == "uniform":
            tensor.uniform_(*args)
        elif init == "constant":
            tensor.fill_(args[0])
        elif init == "zeros":
            tensor.zero_()
        elif init == "ones":
            tensor.fill_(1.0)
        else:
            raise ValueError(f"unknown initialiser {init!r}")
    module.register_parameter(leaf, nn.Parameter(tensor))
''',
    "_check_input": '''
def _check_input(value, name, shape, ids):
    """Trailing dims must match the declared legs (None: any size); ids must be integers."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"input {name} must be a torch.Tensor, got {type(value).__name__}")
    if ids and (value.dtype.is_floating_point or value.dtype.is_complex):
        raise TypeError(f"input {name} holds token ids and must be an integer tensor, got {value.dtype}")
    actual = tuple(value.shape[value.dim() - len(shape):]) if value.dim() >= len(shape) else None
    if actual is None or any(want is not None and want != got for want, got in zip(shape, actual)):
        want = ", ".join("?" if s is None else str(s) for s in shape)
        raise ValueError(f"input {name} must have shape (..., {want}), got {tuple(value.shape)}")
''',
    "_run_hooks": '''
def _run_hooks(module, name, value):
    """Pass a value through the hooks registered for it (tndsl.hooks)."""
    for hook in module.tndsl_hooks.get(name, ()):
        result = hook(value)
        if result is not None:
            value = result
    return value
''',
    "_positions": '''
def _positions(t, axis):
    """Index positions along `axis` (negative), shaped to broadcast over the later dims."""
    n = t.size(axis)
    return torch.arange(n, device=t.device).view((n,) + (1,) * (-axis - 1))
''',
    "_masked_softmax": '''
def _masked_softmax(t, keep, legs):
    """Softmax over the last `legs` dims where `keep` holds; masked entries, and rows with
    nothing kept, are exactly 0."""
    t = t.masked_fill(~keep, float("-inf"))
    return _softmax(t, legs).masked_fill(~keep, 0.0)
''',
    "_softmax": '''
def _softmax(t, legs):
    if legs == 1:
        return torch.softmax(t, dim=-1)
    flat = t.reshape(t.shape[:t.dim() - legs] + (-1,))
    return torch.softmax(flat, dim=-1).reshape(t.shape)
''',
    "_rmsnorm": '''
def _rmsnorm(t, legs, eps):
    dims = tuple(range(-legs, 0))
    return t * torch.rsqrt(t.pow(2).mean(dim=dims, keepdim=True) + eps)
''',
    **fixed_forms.HELPERS,
}
HELPER_DEPENDENCIES = {"_masked_softmax": ("_softmax",)}


@dataclass(frozen=True)
class Generated:
    """Source of a module and what its forward takes and returns."""

    source: str
    class_name: str
    inputs: tuple[str, ...]       # .tn names, in forward's argument order
    arguments: tuple[str, ...]    # the matching Python parameter names
    outputs: tuple[str, ...]
    filename: str

    def build(self) -> nn.Module:
        """Execute the generated source (ours, not the user's) and instantiate the class."""
        linecache.cache[self.filename] = (len(self.source), None,
                                          self.source.splitlines(True), self.filename)
        namespace: dict = {"__name__": f"tndsl_generated_{self.class_name}"}
        exec(compile(self.source, self.filename, "exec"), namespace)
        module = namespace[self.class_name]()
        module.tndsl_source = self.source
        return module


def generate(program, outputs: Sequence[str] | None = None, *, optimizer: str = "auto",
             memory_budget: int = DEFAULT_MEMORY_BUDGET, name: str | None = None
             ) -> Generated:
    """Generate the module for `program` computing `outputs` (default: the final equation)."""
    return _Generator(program, outputs, optimizer, memory_budget, name).run()


@dataclass
class _Value:
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


@dataclass
class _Forward:
    lines: list[str] = field(default_factory=list)

    def emit(self, line: str) -> None:
        self.lines.append("        " + line)


class _Generator:
    def __init__(self, program, outputs, optimizer, memory_budget, name):
        self.program = program
        self.network: ir.Network = program.network
        source = self.network.source
        self.source_name = source.name if source else "<string>"
        stem = name or (self.source_name.rsplit("/", 1)[-1].removesuffix(".tn")
                        if source else "model")
        self.class_name = make_class_name(stem)
        self.optimizer = optimizer
        self.memory_budget = memory_budget
        self.ns = Namespace(set(HELPERS))
        self.helpers: set[str] = set()
        self.sizes: Mapping[str, int | None] = program.sizes
        self.tensors = {t.name: t for t in self.network.tensors}
        self.equations = {eq.name: eq for eq in self.network.equations}
        self.outputs = self._outputs(outputs)
        self.values: dict[str, _Value] = {}
        self.runtime_dims: dict[str, str] = {}  # unsized dim -> variable read from an input
        self.index_dims: dict[str, str] = {}     # of the equation being generated
        self.hook_names: list[str] = []  # equations computed, in order: the hook points
        self.linear = None  # the last term's final matmul, if it was one (for bias fusion)
        self.bias = None    # the last term, if it was a broadcast param (a bias)
        self.out = _Forward()

    # ---- driver ----------------------------------------------------------------------
    def _outputs(self, outputs) -> tuple[str, ...]:
        if outputs is None:
            final = self.program.final
            if final is None:
                raise TnError("the program has no equations to compile")
            return (final.name,)
        missing = [o for o in outputs if o not in self.equations]
        if missing:
            from tndsl.errors import UnknownNameError, did_you_mean
            raise UnknownNameError(f"no equation `{missing[0]}` to output",
                                   hint=did_you_mean(missing[0], self.equations))
        return tuple(dict.fromkeys(outputs))

    def run(self) -> Generated:
        order = ir.dependency_order(self.network, list(self.outputs))
        used = {r.name for eq in order for r in ir.refs(eq.rhs)}
        params = [t for t in self.network.tensors if t.kind == "param"]
        inputs = [t for t in self.network.tensors if t.kind == "input" and t.name in used]
        self._check_param_paths(params)
        arguments = [self.ns(f"input:{t.name}", t.name) for t in inputs]
        for tensor, arg in zip(inputs, arguments):
            self._bind_input(tensor, arg)
        for param in params:
            if param.name in used:
                var = self.ns(f"value:{param.name}", param.name)
                self.values[param.name] = _Value(var, False)
                self.out.emit(f"{var} = self.get_parameter({param.name!r})")
        for tensor in self.network.tensors:
            if tensor.kind == "fixed" and tensor.name in used:
                self.values[tensor.name] = _Value("", False, fixed=tensor)
        for eq in order:
            self._equation(eq)
        returns = [self.values[o].var for o in self.outputs]
        if len(returns) == 1:
            self.out.emit(f"return {returns[0]}")
        else:
            pairs = ", ".join(f"{o!r}: {v}" for o, v in zip(self.outputs, returns))
            self.out.emit(f"return {{{pairs}}}")
        source = self._module_source(params, inputs, arguments)
        filename = f"<tndsl:{self.class_name}>"
        return Generated(source, self.class_name, tuple(t.name for t in inputs),
                         tuple(arguments), self.outputs, filename)

    def _check_param_paths(self, params) -> None:
        paths = {p.name for p in params}
        # An instance's attributes (`training` is set in __init__) and the module's own.
        reserved = set(dir(nn.Module())) | {"tndsl_hooks", "tndsl_source", "HOOK_NAMES"}
        for param in params:
            parts = param.name.split(".")
            for k in range(1, len(parts)):
                prefix = ".".join(parts[:k])
                if prefix in paths:
                    raise TnError(f"param `{prefix}` is also a prefix of `{param.name}`; a state "
                                  "dict cannot hold both", param.span)
            for part in parts:
                if part in reserved:
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
            check_entries(entries, self.memory_budget, f"param `{param.name}`", param.span)

    def _bind_input(self, tensor: ir.Tensor, arg: str) -> None:
        self.helpers.add("_check_input")
        legs = [leg for leg in tensor.legs if leg.name != tensor.onehot]
        shape = tuple(self.sizes.get(leg.dim) for leg in legs)
        ids = tensor.onehot is not None
        self.out.emit(f"_check_input({arg}, {tensor.name!r}, {shape!r}, ids={ids})")
        for k, leg in enumerate(legs):
            if self.sizes.get(leg.dim) is None and leg.dim not in self.runtime_dims:
                var = self.ns(f"dim:{leg.dim}", leg.dim)
                self.runtime_dims[leg.dim] = var
                self.out.emit(f"{var} = {arg}.shape[{k - len(legs)}]")
        onehot = [leg.name for leg in tensor.legs].index(tensor.onehot) if ids else None
        self.values[tensor.name] = _Value(arg, True, onehot)

    # ---- equations -------------------------------------------------------------------
    def _equation(self, eq: ir.Equation) -> None:
        var = self.ns(f"value:{eq.name}", eq.name)
        self.index_dims = {leg.name: leg.dim for leg in eq.index_dims}
        self.out.emit(f"# {python_comment(printer.equation_line(eq))}")
        expr, batched = self._sum(eq.rhs, eq.indices, eq.name, eq.span)
        self.out.emit(f"{var} = {expr}")
        # A hook point: reading or changing the value here changes what follows.
        self.out.emit(f"if self.tndsl_hooks: {var} = _run_hooks(self, {eq.name!r}, {var})")
        self.hook_names.append(eq.name)
        self.values[eq.name] = _Value(var, batched)

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
        onehots: list[tuple[ir.Ref, _Value]] = []
        fixeds: list[tuple[ir.Ref, ir.Tensor]] = []
        ones: set[str] = set()
        for k, factor in enumerate(term.factors):
            if isinstance(factor, ir.Ref):
                if factor.name == ir.ONES:
                    ones.update(factor.indices)
                    continue
                value = self.values[factor.name]
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

    def _operand(self, var: str, indices: list[str], batched: bool) -> _Operand:
        size = 1
        for index in indices:
            size *= self._plan_size(index)
        return _Operand(var, indices, batched, size)

    def _onehot(self, ref: ir.Ref, value: _Value, operands: list[_Operand],
                layout: tuple[str, ...], hint: str) -> list[_Operand]:
        leg = ref.indices[value.onehot]
        rest = [i for k, i in enumerate(ref.indices) if k != value.onehot]
        partners = [op for op in operands if leg in op.indices]
        if (leg not in layout and leg not in rest and len(partners) == 1
                and partners[0].indices.count(leg) == 1 and not partners[0].batched):
            partner = partners[0]
            position = partner.indices.index(leg)
            table = as_primary(partner.var) + ("" if position == 0 else f".movedim({position}, 0)")
            gathered = self._temp(hint, f"{table}[{value.var}]")
            indices = rest + [i for i in partner.indices if i != leg]
            return [op for op in operands if op is not partner] + \
                [_Operand(gathered, indices, True, partner.size)]
        # Else any float value in scope: a float64 model must not compute in float32.
        dtype = next((f"{as_primary(v.var)}.dtype" for v in [*operands, *self.values.values()]
                      if getattr(v, "onehot", None) is None), "torch.get_default_dtype()")
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
        operands = [_Operand(self._temp(hint, op.var), op.indices, op.batched, op.size)
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
            sizes = {c: self._plan_size(name) for name, c in letters.items()}
            want = "".join(k + nn_)
            weight = w
            if ws != want:
                perm = tuple(ws.index(c) for c in want)
                weight = f"{w}.permute{perm}"
            if len(k) > 1 or len(nn_) > 1 or ws != want:
                kp = _product(sizes[c] for c in k)
                np_ = _product(sizes[c] for c in nn_)
                # Nothing left on the weight's side: a vector, so `@` drops the dim.
                weight = f"{weight}.reshape({kp}, {np_})" if nn_ else f"{weight}.reshape({kp})"
            left = x if len(k) == 1 else f"{x}.flatten(-{len(k)})"
            code = f"{left} @ {weight}"
            if last and nn_:
                names = {c: name for name, c in letters.items()}
                self.linear = (left, weight, tuple(names[c] for c in nn_),
                               tuple(sizes[c] for c in nn_))
            if len(nn_) > 1:
                code = f"({code}).unflatten(-1, {tuple(sizes[c] for c in nn_)})"
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
            return ELEMENTWISE[factor.function].format(code), list(legs), batched
        layout = [i for i in legs if i not in factor.legs] + list(factor.legs)
        k = len(factor.legs)
        mask = _direct_mask(factor.argument)
        if factor.function == "softmax" and mask is not None:
            self.helpers.update(("_masked_softmax", "_softmax"))
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
        for cond in conditions:
            left = f"_positions({var}, {layout.index(cond.left) - len(layout)})"
            right = f"_positions({var}, {layout.index(cond.right) - len(layout)})"
            if cond.offset != 0:
                offset = dimmod.evaluate(cond.offset, self.sizes)
                right = f"({right} + {int(offset) if offset.is_Integer else self._scalar_code(offset)})"
            parts.append(f"({left} {cond.op} {right})")
        return " & ".join(parts)

    # ---- sizes, scalars, temporaries -------------------------------------------------
    def _dim_of(self, index: str) -> str:
        return self.index_dims[index]

    def _plan_size(self, index: str) -> int:
        size = self.sizes.get(self._dim_of(index))
        return size if size is not None else PLANNING_SIZE

    def _size_code(self, dim: str) -> str:
        size = self.sizes.get(dim)
        if size is not None:
            return str(size)
        if dim not in self.runtime_dims:
            raise SizeError(f"dim `{dim}` has no size and no input has a leg of it")
        return self.runtime_dims[dim]

    def _scalar_code(self, value: sympy.Expr) -> str:
        value = dimmod.evaluate(value, self.sizes)
        if not value.free_symbols:
            return repr(float(value))
        names = {}
        for symbol in value.free_symbols:
            names[symbol] = sympy.Symbol(self._size_code(symbol.name))
        return sympy.pycode(value.subs(names), fully_qualified_modules=True)

    def _temp(self, hint: str, code: str) -> str:
        if code.isidentifier():
            return code
        var = self.ns.fresh(hint.rsplit(".", 1)[-1] if "." in hint else hint)
        self.out.emit(f"{var} = {code}")
        return var

    # ---- the module ------------------------------------------------------------------
    def _module_source(self, params, inputs, arguments) -> str:
        helpers = set(self.helpers) | {"_run_hooks"}
        if params:
            helpers.add("_param")
        for name in list(helpers):
            helpers.update(HELPER_DEPENDENCIES.get(name, ()))
        lines = [
            f"# Generated by tndsl {__version__}. Needs only torch.",
            "# Do not edit: regenerate with `tndsl compile`.",
            f"# Source: {python_string(self.source_name)}",
            "import math",
            "",
            "import torch",
            "import torch.nn.functional as F",
            "from torch import nn",
            "",
        ]
        for name in sorted(helpers):
            lines.append(HELPERS[name].strip("\n"))
            lines.append("")
        lines.append("")
        doc_inputs = ", ".join(f"{a} ({_legs_doc(t)})" for a, t in zip(arguments, inputs))
        doc_outputs = ", ".join(f"{o}{printer.legs_decl(self.equations[o].legs)}"
                                for o in self.outputs)
        plural = " (a dict by name)" if len(self.outputs) > 1 else ""
        lines += [
            f"class {self.class_name}(nn.Module):",
            f'    """Inputs: {python_docstring(doc_inputs or "none")}.',
            f'    Returns: {python_docstring(doc_outputs)}{plural}.',
            '    Leading batch dimensions of the inputs are carried through. Every equation',
            '    is a hook point (HOOK_NAMES; see tndsl.hooks)."""',
            "",
            f"    HOOK_NAMES = {tuple(self.hook_names)!r}",
            "",
            "    def __init__(self):",
            "        super().__init__()",
            "        self.tndsl_hooks = {}  # equation name -> functions of its value",
        ]
        for param in params:
            shape = tuple(self.sizes[leg.dim] for leg in param.legs)
            init, args = (param.init.name, param.init.args) if param.init else inits.DEFAULT
            lines.append(f"        _param(self, {param.name!r}, {shape!r}, {init!r}, "
                         f"{tuple(args)!r})")
        lines += ["", f"    def forward({', '.join(['self', *arguments])}):"]
        lines += self.out.lines
        return "\n".join(lines) + "\n"


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


def _product(values) -> int:
    total = 1
    for v in values:
        total *= v
    return total


def _fuse_bias(parts, linears, biases) -> list[str] | None:
    """`x @ W + b * ones[...]` → `F.linear(x, W.t(), b)`: one addmm, no separate pass
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
            code = f"F.linear({left}, {weight}.t(), {flat_bias})"
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


def _legs_doc(tensor: ir.Tensor) -> str:
    if tensor.onehot is None:
        return "[" + ", ".join(f"{l.name}: {l.dim}" for l in tensor.legs) + "]"
    rest = [l for l in tensor.legs if l.name != tensor.onehot]
    dim = next(l.dim for l in tensor.legs if l.name == tensor.onehot)
    return "[" + ", ".join(f"{l.name}: {l.dim}" for l in rest) + f"] ids in {dim}"
