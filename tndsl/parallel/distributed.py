"""Compiled models on several processes, with torch.distributed's own machinery.

    mesh = init_device_mesh("cuda", (world_size,))
    model = tndsl.parallel.distributed.parallelize(program.module(), mesh, ("Heads", "Hidden"),
                                          program=program)
    logits = model(tokens)          # every rank returns the whole logits

`parallelize` derives the tensor-parallel plan from the leg names (`tndsl.passes.shard`)
and applies it with `parallelize_module`: every sharded param becomes a DTensor split
along its leg, every other param a replicated DTensor. The generated forward is left as
it is: DTensor's sharding propagation runs it on the local slices. Each equation's value
is pinned to the plan's placement at its hook point (a partial sum all-reduced there, a
slice kept a slice), so the collectives are exactly the plan's (tests/test_distributed.py
measures them) and not wherever DTensor's lazy propagation would take a partial sum.
The plan decides what is split and where sums are reduced; torch.distributed
communicates.

`fully_shard` applies FSDP2 (`torch.distributed.fsdp.fully_shard`) to each block
instance that is its own called submodule, then to the root.

`contract_sliced` (tndsl.parallel.slicing) contracts one network too large for one
process, its slices spread over the ranks.

Launch with `torchrun --nproc_per_node N script.py` (docs/distributed.md).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, \
    distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle, parallelize_module
from torch.utils._python_dispatch import TorchDispatchMode

from tndsl.interp import hooks

from tndsl.lang import ir
from tndsl.lang.errors import TnError
from tndsl.passes.shard import ShardPlan, shard_plan
from tndsl.models.weights import contiguous_params


def parallelize(model: nn.Module, mesh, shard: Sequence[str] | str = ("Heads", "Hidden"), *,
                program=None, plan: ShardPlan | None = None) -> nn.Module:
    """Shard `model` (a compiled tndsl module) over the 1-D device mesh `mesh` along the
    dims `shard`, in place; returns it. `program` is the `tndsl.Program` it was compiled
    from (or pass a ready `plan`). Outputs come back whole, as plain tensors, on every
    rank; intermediates seen by hooks are DTensors (`gather` makes them whole)."""
    if mesh.ndim != 1:
        raise TnError(f"parallelize shards over a 1-D mesh, got {mesh.ndim} dims",
                      hint="pass mesh['tp'] of a 2-D mesh")
    if plan is None:
        program = program if program is not None else getattr(model, "tndsl_program", None)
        if program is None:
            raise TnError("parallelize needs the program the model was compiled from",
                          hint="parallelize(model, mesh, dims, program=tndsl.load(...))")
        plan = shard_plan(program, shard, mesh.size(), outputs=_outputs(model, program))
    elif plan.ranks != mesh.size():
        raise TnError(f"the plan is for {plan.ranks} ranks, the mesh has {mesh.size()}")
    return parallelize_module(model, mesh, ShardLegs(plan))


class ShardLegs(ParallelStyle):
    """The ParallelStyle of a tndsl shard plan: params by their `.tn` path become DTensors
    (sharded along their leg, or replicated); inputs stay plain tensors treated as
    replicated; outputs come back whole. Works on flat modules (params registered by
    path) and on modules with one submodule per block alike, as it goes by param path."""

    def __init__(self, plan: ShardPlan):
        super().__init__()
        self.plan = plan

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        placements = {p.name: [Shard(p.axis)] for p in self.plan.params}

        def partition(prefix: str, submodule: nn.Module, mesh) -> None:
            for name, param in list(submodule.named_parameters(recurse=False)):
                path = f"{prefix}.{name}" if prefix else name
                where = placements.get(path, [Replicate()])
                # Contiguous first: DTensor reshapes a shard with a view, which a param
                # stored permuted (passes.layout) would not allow.
                submodule.register_parameter(name, nn.Parameter(
                    distribute_tensor(param.data.contiguous(), mesh, where),
                    requires_grad=param.requires_grad))

        module = distribute_module(module, device_mesh, partition)
        # The generated forward builds masks and positions as plain tensors: DTensor
        # treats them as replicated inside this switch, and tensors autograd saves for
        # the backward (which runs outside it) are saved as replicated DTensors.
        module.register_forward_pre_hook(_ReplicatePlainTensors(device_mesh).enter)
        module.register_forward_hook(_leave, always_call=True)
        self._pin_equations(module, device_mesh)
        return module

    def _pin_equations(self, module: nn.Module, mesh) -> None:
        """Give each computed equation's value the plan's placement as it is computed
        (`ShardPlan.pins`): a partial sum is all-reduced where the plan reduces it, and a
        sliced value stays sliced along the plan's leg."""
        for name, (legs, axis) in self.plan.pins().items():
            _add_hook(module, name, _Pin(mesh, legs, axis))


class _Pin:
    def __init__(self, mesh, legs: int, axis: int | None):
        self.mesh, self.legs, self.axis = mesh, legs, axis

    def __call__(self, value):
        if not isinstance(value, DTensor):
            return value
        if self.axis is None:
            want = [Replicate()]
        else:  # leading batch dims come first
            want = [Shard(value.dim() - self.legs + self.axis)]
        if list(value.placements) == want:
            return value
        return value.redistribute(self.mesh, want)


def _add_hook(model: nn.Module, name: str, fn) -> None:
    """A permanent hook on the equation `name`, before any the user adds: on the module's
    hook-point submodule where it has them (tndsl.interp.hooks.hook_points), else in the flat
    module's hook table. Equations the module does not expose (fused away) are skipped."""
    if hasattr(hooks, "hook_points") and hasattr(type(model), "HOOK_ORDER"):
        point = hooks.hook_points(model).get(name)
        if point is not None:
            point.register_forward_hook(lambda module, args, output: fn(output))
        return
    if name in getattr(model, "HOOK_NAMES", ()):
        model.tndsl_hooks.setdefault(name, []).insert(0, fn)


class _ReplicatePlainTensors:
    def __init__(self, mesh):
        self.mesh = mesh

    def enter(self, module, args) -> None:
        dispatcher = DTensor._op_dispatcher
        saving = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        saving.__enter__()
        module._tndsl_leave = (dispatcher._allow_implicit_replication, saving)
        dispatcher._allow_implicit_replication = True

    def _pack(self, tensor):
        if isinstance(tensor, DTensor) or isinstance(tensor, nn.Parameter):
            return tensor
        return DTensor.from_local(tensor, self.mesh, [Replicate()] * self.mesh.ndim,
                                  run_check=False)


def _unpack(tensor):
    return tensor


def _leave(module, args, output):
    implicit, saving = module.__dict__.pop("_tndsl_leave")
    DTensor._op_dispatcher._allow_implicit_replication = implicit
    saving.__exit__(None, None, None)
    return _whole(output)


def _whole(output):
    """Outputs as plain, whole tensors on every rank (a sharded one is all-gathered)."""
    if isinstance(output, DTensor):
        return output.full_tensor()
    if isinstance(output, tuple):
        return tuple(_whole(o) for o in output)
    if isinstance(output, list):
        return [_whole(o) for o in output]
    if isinstance(output, dict):
        return {k: _whole(v) for k, v in output.items()}
    return output


def _outputs(model: nn.Module, program) -> list[str]:
    """The equations a compiled module returns: those it computes that none of its other
    computed equations use (a module compiled for some outputs computes only what they
    need)."""
    try:
        names = hooks.hook_names(model)
    except TnError:  # not a compiled module with hook points
        names = ()
    if not names:
        return [program.final.name]
    computed = set(names)
    used = {ref.name for eq in program.equations if eq.name in computed
            for ref in ir.refs(eq.rhs)}
    return [name for name in names if name not in used]


def gather(values):
    """Whole tensors from a dict (a hook cache) or a single value that may hold DTensors:
    a sharded activation is all-gathered on request, a partial one all-reduced."""
    if isinstance(values, DTensor):
        return values.full_tensor()
    if isinstance(values, Mapping):   # a dict, or a run_with_cache ActivationCache
        return {k: gather(v) for k, v in values.items()}
    return values


# ---- FSDP2 ------------------------------------------------------------------------------

def fully_shard(model: nn.Module, mesh, *, program=None, **options) -> nn.Module:
    """FSDP2 over `mesh`: each block instance (a top-level instance path of the program,
    or an `nn.ModuleList` entry) that is a called submodule is its own `fully_shard`
    unit, then the root holds the rest. Options go to `torch.distributed.fsdp.fully_shard`
    (reshard_after_forward, mp_policy, ...). Returns the model, whose `tndsl_fsdp_units`
    lists the wrapped paths."""
    from torch.distributed.fsdp import fully_shard as fsdp

    program = program if program is not None else getattr(model, "tndsl_program", None)
    contiguous_params(model)  # FSDP2 takes only contiguous params (passes.layout)
    units = [path for path in _block_paths(model, program)
             if _is_called_submodule(model, path)]
    for path in units:
        fsdp(model.get_submodule(path), mesh=mesh, **options)
    fsdp(model, mesh=mesh, **options)
    model.tndsl_fsdp_units = tuple(units) + ("",)
    return model


def _block_paths(model: nn.Module, program) -> list[str]:
    paths: list[str] = []
    if program is not None:
        instances = [inst.path for inst in program.network.instances]
        paths = [p for p in instances
                 if not any(p.startswith(other + ".") for other in instances)]
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            # Entries that hold params (blocks); not lists of hook points.
            paths.extend(f"{name}.{k}" if name else str(k) for k, entry in enumerate(module)
                         if next(entry.parameters(), None) is not None)
    return list(dict.fromkeys(paths))


def _is_called_submodule(model: nn.Module, path: str) -> bool:
    """A submodule with its own forward: FSDP2 gathers a unit's params in that forward's
    pre-hook, so a mere container of params (a flat compiled module's `blocks.0`, read
    by the root's forward) must stay in the root's unit."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return False
    return type(module).forward is not nn.Module.forward


# ---- measuring communication ---------------------------------------------------------

class CommunicationLog(TorchDispatchMode):
    """Records every collective DTensor issues in the `with` body: its kind and the bytes
    of the whole communicated value (for an all-reduce its input, for an all-gather its
    output), comparable with `ShardPlan.payload`."""

    KINDS = {"all_reduce": "all-reduce", "all_gather_into_tensor": "all-gather",
             "reduce_scatter_tensor": "reduce-scatter", "all_to_all_single": "all-to-all"}

    def __init__(self):
        super().__init__()
        self.records: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(issubclass(t, DTensor) for t in types):
            return NotImplemented  # let DTensor lower the op to local ops and collectives
        result = func(*args, **(kwargs or {}))
        namespace = func.namespace
        base = func._schema.name.split("::")[-1]
        if namespace in ("_c10d_functional", "c10d_functional") and base in self.KINDS:
            kind = self.KINDS[base]
            value = result if kind == "all-gather" else args[0]
            self.records.append((kind, value.numel() * value.element_size()))
        return result

    @property
    def total_bytes(self) -> int:
        return sum(b for _, b in self.records)

    def count(self, kind: str) -> int:
        return sum(k == kind for k, _ in self.records)
