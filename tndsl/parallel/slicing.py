"""Sliced contraction: one network too big for one process's memory, spread over ranks.

Slicing (cotengra's) fixes some contracted indices to each of their values in turn:
every slice is the same network, smaller, and the result is the sum over slices. The
largest intermediate of a slice must fit the memory budget; the slices are dealt out
to the ranks round-robin, each rank sums its own, and one all-reduce adds the ranks'
sums. Only contracted indices are sliced, so every rank's partial sum has the whole
output's shape.

The equation's scalar factor survives slicing: its coefficient (numbers, signs, dims,
division by them) and the `ones` factors (a contracted index only `ones` has multiplies
by its size; an output index only `ones` has is broadcast) are applied once to the sum.
Fixed tensors (`rotary`, `grouping`) are built from their definitions when not given.

    plan = plan_slices(program, "norm", memory_budget=2**20)
    value = contract_sliced(plan, {"W_E": w_e, "W_Q": w_q, ...})   # in every rank

`plan_slices` is pure (the contraction tree and the sliced indices, found by cotengra);
`contract_sliced` runs it with torch and, when a process group is up, torch.distributed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

from tndsl.lang import dims as dimmod, ir
from tndsl.lang.errors import (ArgumentError, ResourceError, TnError, UnknownNameError,
                               did_you_mean)

BYTES_PER_ENTRY = 8  # float64: sliced contractions are for exact-enough sums
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"  # torch.einsum's indices


@dataclass(frozen=True)
class SlicePlan:
    equation: str
    operands: tuple[tuple[str, tuple[str, ...]], ...]   # (tensor, its indices)
    output: tuple[str, ...]
    sizes: Mapping[str, int]                            # index -> size
    path: tuple[tuple[int, int], ...]                   # pairwise contraction order
    sliced: tuple[str, ...]                             # sliced indices, in slice order
    nslices: int
    largest: int                   # entries of the largest tensor a slice creates
    unsliced_largest: int          # the same without slicing
    memory_budget: int
    bytes_per_entry: int = BYTES_PER_ENTRY
    # The scalar the contraction is multiplied by: the term's coefficient at the plan's
    # sizes, times the size of every contracted index that only `ones` carries.
    scale: float = 1.0
    # Output indices that only `ones` carries: the contraction leaves them out and the
    # result is broadcast along them.
    broadcast: tuple[str, ...] = ()
    # Fixed tensors among the operands, with the sizes of their dims: their values are
    # their definitions, built by contract_sliced when not given.
    fixed: tuple[tuple[ir.Tensor, tuple[tuple[str, int], ...]], ...] = ()

    @property
    def contracted_output(self) -> tuple[str, ...]:
        """The output indices the network of operands itself produces."""
        return tuple(i for i in self.output if i not in self.broadcast)

    @property
    def slice_bytes(self) -> int:
        """Working memory of one slice: its largest intermediate and the running sum."""
        return (self.largest + _entries(self.output, self.sizes)) * self.bytes_per_entry

    def slices_of(self, rank: int, world: int) -> range:
        return range(rank, self.nslices, world)

    def tree(self):
        """The cotengra contraction tree with the plan's indices sliced, rebuilt from the
        path and the sliced indices alone (so every rank slices identically)."""
        import cotengra
        # torch.einsum, which contracts each step, takes one-letter index names only
        letter = {index: LETTERS[k] for k, index in enumerate(self.sizes)}
        tree = cotengra.ContractionTree.from_path(
            [tuple(letter[i] for i in idx) for _, idx in self.operands],
            tuple(letter[i] for i in self.contracted_output),
            {letter[i]: size for i, size in self.sizes.items()},
            path=[tuple(p) for p in self.path])
        for index in self.sliced:
            tree.remove_ind_(letter[index])
        return tree

    def to_json(self) -> str:
        return json.dumps({"path": [list(p) for p in self.path], "sliced": list(self.sliced)})

    def with_json(self, text: str) -> "SlicePlan":
        """This plan with the path and sliced indices of another process's plan."""
        data = json.loads(text)
        path = tuple(tuple(p) for p in data["path"])
        sliced = tuple(data["sliced"])
        nslices = 1
        for index in sliced:
            nslices *= self.sizes[index]
        return SlicePlan(self.equation, self.operands, self.output, self.sizes, path, sliced,
                         nslices, self.largest, self.unsliced_largest, self.memory_budget,
                         self.bytes_per_entry, self.scale, self.broadcast, self.fixed)


def plan_slices(program, name: str, memory_budget: int, *,
                bytes_per_entry: int = BYTES_PER_ENTRY, seed: int = 0) -> SlicePlan:
    """Plan equation `name` (one product of params and inputs, no boxes) so that no slice
    needs more than `memory_budget` bytes. Raises ResourceError when even slicing every
    contracted index cannot (the output itself is too large)."""
    import cotengra

    for argument, value in (("memory_budget", memory_budget),
                            ("bytes_per_entry", bytes_per_entry)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArgumentError(f"plan_slices: {argument} must be a positive integer "
                                f"(bytes), got {value!r}")
    equations = {eq.name: eq for eq in program.equations}
    if name not in equations:
        raise UnknownNameError(f"no equation `{name}`", hint=did_you_mean(name, equations))
    eq = equations[name]
    if len(eq.rhs.terms) != 1:
        raise TnError(f"`{name}` is a sum of {len(eq.rhs.terms)} terms; a sliced contraction "
                      "takes one product", eq.rhs.span or eq.span,
                      hint="name each term with its own equation and slice each")
    tensors = {t.name for t in program.network.tensors}
    operands = []
    for factor in eq.rhs.terms[0].factors:
        if not isinstance(factor, ir.Ref) or (factor.name not in tensors
                                              and factor.name != ir.ONES):
            raise TnError(f"`{name}` contracts something other than params and inputs; a "
                          "sliced contraction takes one network of tensors",
                          getattr(factor, "span", None) or eq.span,
                          hint="write the network out over params and inputs")
        if factor.name != ir.ONES:
            operands.append((factor.name, tuple(factor.indices)))
    if not operands:
        raise TnError(f"`{name}` contracts no tensors", eq.span)
    dims = {leg.name: leg.dim for leg in eq.index_dims}
    sizes = {}
    for index, dim in dims.items():
        if program.sizes.get(dim) is None:
            raise TnError(f"dim `{dim}` has no size; a contraction needs one", eq.span,
                          hint=f"give it with dims={{'{dim}': ...}}")
        sizes[index] = program.sizes[dim]
    if len(sizes) > len(LETTERS):
        raise ResourceError(f"`{name}` uses {len(sizes)} indices; a sliced contraction "
                            f"takes at most {len(LETTERS)} (torch.einsum's letters)", eq.span)
    output = tuple(eq.indices)
    term = eq.rhs.terms[0]
    carried = {i for _, idx in operands for i in idx}
    only_ones = {i for f in term.factors if isinstance(f, ir.Ref) and f.name == ir.ONES
                 for i in f.indices} - carried
    try:
        scale = float(dimmod.evaluate(term.coefficient, program.sizes))
    except (TypeError, ValueError):
        raise TnError(f"the coefficient of `{name}` has no value at these sizes",
                      term.span or eq.span) from None
    for index in sorted(only_ones - set(output)):
        scale *= sizes[index]  # summing `ones` over an index counts its values
    declared = {t.name: t for t in program.network.tensors}
    fixed = tuple((declared[n], tuple((leg.dim, program.sizes[leg.dim])
                                      for leg in declared[n].legs))
                  for n in dict(operands) if declared[n].kind == "fixed")
    broadcast = tuple(i for i in output if i in only_ones)
    contracted_output = tuple(i for i in output if i not in only_ones)
    budget_entries = memory_budget // bytes_per_entry - _entries(output, sizes)
    if budget_entries < 1:
        entries = _entries(output, sizes)
        raise ResourceError(
            f"`{name}` has {entries:,} output entries ({entries * bytes_per_entry:,} bytes); "
            f"the running sum alone leaves nothing of the memory budget of "
            f"{memory_budget:,} bytes for a slice",
            eq.span, hint="raise the budget or slice an output leg by hand")
    inputs = [idx for _, idx in operands]
    optimizer = cotengra.HyperOptimizer(
        methods=["greedy"], max_repeats=16, optlib="random", progbar=False, parallel=False,
        on_trial_error="ignore",
        slicing_opts={"target_size": budget_entries, "allow_outer": False, "seed": seed})
    try:
        sliced_tree = optimizer.search(inputs, contracted_output, sizes)
    except KeyError:  # no trial found a tree: slicing ran out of contracted indices
        raise ResourceError(
            f"`{name}` does not fit the memory budget of {memory_budget:,} bytes even with "
            "every contracted index sliced", eq.span, hint="raise the memory budget") from None
    whole = cotengra.ContractionTree.from_path(inputs, contracted_output, sizes,
                                               path=sliced_tree.get_path())
    plan = SlicePlan(name, tuple(operands), output, sizes,
                     tuple(tuple(p) for p in sliced_tree.get_path()),
                     tuple(sliced_tree.sliced_inds), int(sliced_tree.nslices),
                     int(sliced_tree.max_size()), int(whole.max_size()), memory_budget,
                     bytes_per_entry, scale, broadcast, fixed)
    if plan.slice_bytes > memory_budget:
        raise ResourceError(
            f"`{name}` needs {plan.slice_bytes:,} bytes per slice even sliced over "
            f"{', '.join(plan.sliced) or 'nothing'}, over the budget of {memory_budget:,}",
            eq.span, hint="raise the memory budget")
    return plan


def contract_sliced(plan: SlicePlan, tensors: Mapping[str, "torch.Tensor"], *, group=None):
    """The value of the planned equation. With a torch.distributed process group up,
    rank 0's plan is used by every rank (cotengra's search may differ between processes),
    each rank contracts its share of the slices, and one all-reduce sums them; every rank
    returns the whole value. Without one, all slices run here."""
    import torch
    import torch.distributed as dist

    tensors = dict(tensors)
    given = next(iter(tensors.values()), None)
    for tensor, dim_sizes in plan.fixed:
        if tensor.name not in tensors:
            from tndsl.verify.fixed_values import dense
            tensors[tensor.name] = dense(
                tensor, dict(dim_sizes), torch.float64 if given is None else given.dtype)
            if given is not None:
                tensors[tensor.name] = tensors[tensor.name].to(given.device)
    missing = [n for n, _ in plan.operands if n not in tensors]
    if missing:
        raise UnknownNameError(f"no tensor given for {', '.join(f'`{m}`' for m in missing)}",
                               hint="pass every param and input the equation uses")
    arrays = []
    for name, indices in plan.operands:
        want = tuple(plan.sizes[i] for i in indices)
        value = tensors[name]
        if not isinstance(value, torch.Tensor):
            raise ArgumentError(f"`{name}` must be a floating-point torch.Tensor, got "
                                f"{type(value).__name__}")
        if not (value.is_floating_point() or value.is_complex()):
            raise ArgumentError(f"`{name}` must be a floating-point torch.Tensor, got "
                                f"{value.dtype}")
        if tuple(value.shape) != want:
            raise TnError(f"`{name}` has shape {tuple(value.shape)}, the plan needs {want}")
        arrays.append(value)
    if len({a.dtype for a in arrays}) > 1:
        raise ArgumentError("the tensors must share one dtype, got " + ", ".join(
            f"`{n}` {a.dtype}" for (n, _), a in zip(plan.operands, arrays)))
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(group), dist.get_world_size(group)) if distributed else (0, 1)
    if distributed and world > 1:
        # NCCL communicates CUDA tensors only; gloo takes CPU ones
        device = arrays[0].device if dist.get_backend(group) == "nccl" else "cpu"
        plan = plan.with_json(_broadcast_text(plan.to_json(), group, device))
    tree = plan.tree()
    shape = tuple(plan.sizes[i] for i in plan.contracted_output)
    total = torch.zeros(shape, dtype=arrays[0].dtype, device=arrays[0].device)
    for k in plan.slices_of(rank, world):
        total += tree.contract_slice(arrays, k, backend="torch")
    if distributed and world > 1:
        dist.all_reduce(total, group=group)
    if plan.scale != 1:
        total = total * plan.scale
    if plan.broadcast:  # the legs only `ones` carries: the same value along each
        for axis, index in enumerate(plan.output):
            if index in plan.broadcast:
                total = total.unsqueeze(axis)
        total = total.expand(tuple(plan.sizes[i] for i in plan.output))
    return total


def _broadcast_text(text: str, group, device) -> str:
    """Rank 0's text on every rank (two small broadcasts of bytes; nothing unpickled)."""
    import torch
    import torch.distributed as dist

    data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=device)
    length = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    source = dist.get_global_rank(group, 0) if group is not None else 0
    dist.broadcast(length, source, group=group)
    buffer = data if dist.get_rank(group) == 0 else torch.empty(
        int(length), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, source, group=group)
    return bytes(buffer.cpu().tolist()).decode()


def _entries(indices, sizes) -> int:
    total = 1
    for i in indices:
        total *= sizes[i]
    return total
