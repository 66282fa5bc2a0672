"""Evaluating linear terms of the IR on a batch, from a model's cached activations.

A path term, a component of the residual stream or a frozen norm's input is a product of
tensors: params (read from the model), fixed tensors (their dense values), inputs (given),
`ones`, and intermediates (read from a cache, with the model's leading batch dims). One
`Terms` evaluator contracts such products in float64 (or the dtype asked for) with
opt_einsum, so every analysis reads the same values the same way:

    terms = Terms(program, cache, weights, inputs, batch_shape=(8,))
    value = terms.sum(equation.rhs, equation.indices, legs_of(equation))
"""
from __future__ import annotations

from typing import Callable, Mapping

import opt_einsum
import torch

from tndsl.lang import dims as dimmod, ir
from tndsl.lang.errors import TnError
from tndsl.verify import fixed_values


def legs_of(eq: ir.Equation) -> dict[str, str]:
    """Index name → dim for every index an equation uses."""
    return {leg.name: leg.dim for leg in eq.index_dims or eq.legs or ()}


def lengths_of(program, name: str, value: torch.Tensor) -> dict[str, int]:
    """The run's size of each dim of equation `name`, read off its cached value (a
    sequence shorter than `Context`, or a `Context` declared without a size)."""
    legs = program.legs(name)
    return {leg.dim: size for leg, size in zip(legs, value.shape[value.dim() - len(legs):])}


class Terms:
    """Evaluates products of the program's tensors. `cache` maps intermediates (and, where
    a caller substitutes them, any name) to batched values; `weights` params by name;
    `inputs` input tensors by name (token ids for a one-hot input); `override` replaces
    any operand by name (batched when `batched(name)` says so, default: not a param)."""

    def __init__(self, program, cache: Mapping[str, torch.Tensor],
                 weights: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor]
                 | None = None, *, batch_shape: tuple[int, ...] = (),
                 dtype: torch.dtype = torch.float64,
                 override: Mapping[str, torch.Tensor] | None = None,
                 lengths: Mapping[str, int] | None = None, detach: bool = True):
        self.program = program
        self.sizes = program.sizes
        self.tensors = {t.name: t for t in program.network.tensors}
        self.cache = cache
        self.weights = weights
        self.inputs = dict(inputs or {})
        self.batch_shape = tuple(batch_shape)
        self.dtype = dtype
        self.override = dict(override or {})
        self.lengths = dict(lengths or {})
        self.detach = detach      # False: gradients flow into params and cached values

    def size(self, dim: str) -> int:
        """A dim's size in this run: its run-time length where given (a sequence shorter
        than `Context`), else its declared size."""
        if dim in self.lengths:
            return self.lengths[dim]
        return int(dimmod.evaluate(dimmod.symbol(dim), self.sizes))

    def operand(self, name: str, indices: tuple[str, ...], dims: Mapping[str, str]
                ) -> tuple[torch.Tensor, bool]:
        """The value of one factor and whether it carries the batch dims."""
        if name in self.override:
            value = self.override[name]
            return value.to(self.dtype), value.dim() > len(indices)
        if name == ir.ONES:
            return torch.ones([self.size(dims[i]) for i in indices], dtype=self.dtype), False
        tensor = self.tensors.get(name)
        if tensor is not None and tensor.kind == "param":
            if name not in self.weights:
                raise TnError(f"the model has no param `{name}`")
            weight = self.weights[name]
            return (weight.detach() if self.detach else weight).to(self.dtype), False
        if tensor is not None and tensor.kind == "fixed":
            # A rotary map or a grouping: its dense value, as the reference evaluator
            # builds it (the model applies it in a cheap form and never stores it).
            return fixed_values.dense(tensor, self.sizes, self.dtype), False
        if tensor is not None:  # an input
            if name not in self.inputs:
                raise TnError(f"a term holds the input `{name}`: pass it as "
                              f"inputs={{'{name}': ...}}")
            data = self.inputs[name]
            if tensor.onehot is not None:
                size = self.size({l.name: l.dim for l in tensor.legs}[tensor.onehot])
                position = [leg.name for leg in tensor.legs].index(tensor.onehot)
                data = torch.nn.functional.one_hot(data.long(), size).movedim(
                    -1, data.dim() - len(tensor.legs) + 1 + position)
            return data.to(self.dtype), data.dim() > len(indices)
        if name not in self.cache:
            raise TnError(f"`{name}` is not in the cache",
                          hint="cache it: run_with_cache(model, ..., names=[...]) with this "
                               "name, or names=None for every hook point")
        value = self.cache[name]
        return (value.detach() if self.detach else value).to(self.dtype), True

    def sum(self, node: ir.Sum, output: tuple[str, ...], dims: Mapping[str, str]
            ) -> torch.Tensor:
        total = None
        for term in node.terms:
            part = self.term(term, output, dims)
            total = part if total is None else total + part
        return total

    def term(self, term: ir.Term, output: tuple[str, ...], dims: Mapping[str, str],
             operand: Callable | None = None) -> torch.Tensor:
        """One product with its coefficient, with the batch dims first on the result (a
        product of weights alone is the same for every batch entry)."""
        operand = operand or self.operand
        batch = len(self.batch_shape)
        letters: dict[str, str] = {}

        def letter(index: str) -> str:
            if index not in letters:
                letters[index] = opt_einsum.get_symbol(batch + len(letters))
            return letters[index]
        batch_letters = "".join(opt_einsum.get_symbol(k) for k in range(batch))
        factors = []
        for factor in term.factors:
            if not isinstance(factor, ir.Ref):
                raise TnError("a linear term holds only tensors (a box is a given tensor)",
                              getattr(factor, "span", None))
            value, batched = operand(factor.name, factor.indices, dims)
            factors.append(("".join(letter(i) for i in factor.indices), value, batched))
        # A dim that varies at run time (the sequence) may be shorter in the activations
        # than declared: weights, fixed tensors and ones cover its first positions, as the
        # compiled model slices them.
        run_time: dict[str, int] = {letter(i): self.lengths[dims[i]] for i in
                                    {i for f in term.factors for i in f.indices} | set(output)
                                    if dims.get(i) in self.lengths}
        for legs, value, batched in factors:
            if batched:
                for c, size in zip(legs, value.shape[batch:]):
                    run_time[c] = min(run_time.get(c, size), size)
        specs, operands, any_batched = [], [], False
        for legs, value, batched in factors:
            if not batched:
                for k, c in enumerate(legs):
                    if value.shape[k] > run_time.get(c, value.shape[k]):
                        value = value.narrow(k, 0, run_time[c])
            any_batched |= batched
            specs.append((batch_letters if batched else "") + legs)
            operands.append(value)
        out = "".join(letter(i) for i in output)
        coefficient = float(dimmod.evaluate(term.coefficient, self.sizes))
        if not operands:
            shape = [self.size(dims[i]) for i in output]
            result = torch.full(shape, coefficient, dtype=self.dtype)
        else:
            spec = ",".join(specs) + "->" + (batch_letters if any_batched else "") + out
            result = opt_einsum.contract(spec, *operands, backend="torch") * coefficient
        if any_batched:
            return result
        return result.expand(*self.batch_shape, *result.shape)


__all__ = ["Terms", "legs_of", "lengths_of"]
