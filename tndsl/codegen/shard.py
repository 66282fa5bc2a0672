"""`tndsl compile --shard`: the tensor-parallel plan written into the generated file as a
`parallelize(self, mesh)` method of the root class.

The method does what `tndsl.parallel.distributed.parallelize` does with the same plan
(`tndsl.passes.shard`), with torch's own APIs only, so the file stays standalone:
params by path become DTensors (split along the plan's leg, or replicated) through
`parallelize_module`; each equation's value is pinned to the plan's placement at its
hook point (a partial sum all-reduced where the plan reduces it); plain tensors the
forward builds count as replicated; outputs come back whole. torch.distributed is
imported inside the method, so single-process use never loads it.

What varies with the program is data only — the param → axis table, the pins and the
dims split with their sizes — written as literals (names through `python_string`,
comments through `python_comment`, numbers as ints). The code around it is this
module's fixed text. Generating it does not import torch.
"""
from __future__ import annotations

from typing import Sequence

from tndsl.lang import ir
from tndsl.lang.errors import TnError
from tndsl.passes.shard import ShardPlan, describe_uses, shard_plan
from tndsl.lang.text import python_comment, python_docstring, python_string

METHOD = "parallelize"


def parallelize_method(program, dims: Sequence[str] | str, ranks: int,
                       outputs: Sequence[str]) -> list[str]:
    """The lines (indented for a class body) of the root class's `parallelize` method
    for sharding `dims`, planned for `ranks` ranks (any mesh whose size divides the
    split dims works at run time). Raises the plan's located errors (`ShardError`), and
    a located error if a top-level param or instance would hide the method."""
    _check_free(program)
    plan = shard_plan(program, dims, ranks, outputs=list(outputs))
    return _method(plan)


def _check_free(program) -> None:
    network: ir.Network = program.network
    for tensor in network.tensors:
        if tensor.kind == "param" and tensor.name.split(".")[0] == METHOD:
            raise TnError(f"param `{tensor.name}` takes the name `{METHOD}`, the method "
                          "`--shard` adds to the model", tensor.span,
                          hint="rename that segment, or compile without --shard")
    for instance in network.instances:
        if instance.path.split(".")[0] == METHOD:
            raise TnError(f"instance `{instance.path}` takes the name `{METHOD}`, the method "
                          "`--shard` adds to the model", instance.span,
                          hint="rename it, or compile without --shard")


def _method(plan: ShardPlan) -> list[str]:
    shown = ",".join(plan.dims)
    reductions = {c.equation: c.contracted for c in plan.collectives
                  if c.kind == "all-reduce" and not c.where}
    lines = [
        f"def {METHOD}(self, mesh):",
        f'    """Tensor parallelism over the 1-D DeviceMesh `mesh`: the plan of `tndsl compile',
        f"    --shard {python_docstring(shown)}` (`tndsl cost --shard` prints it), applied as",
        "    tndsl.parallel.distributed.parallelize applies it. The params below are split along one",
        "    leg, every other param is replicated; each equation's value is pinned to its",
        "    placement at its hook point, so partial sums are all-reduced where the plan says.",
        "    Every rank must start with the same params. In place; returns the model, whose",
        "    outputs come back whole, as plain tensors, on every rank. Launch every rank with",
        '    torchrun (gloo on CPU, NCCL on GPU)."""',
        "    # Imported here: single-process use never loads torch.distributed.tensor.",
        "    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, "
        "distribute_tensor",
        "    from torch.distributed.tensor.experimental import implicit_replication",
        "    from torch.distributed.tensor.parallel import ParallelStyle, parallelize_module",
        "",
        "    # param path -> the axis it is split along",
        "    sharded = {",
    ]
    for p in plan.params:
        roles = describe_uses(p.uses)
        lines.append(f"        {python_string(p.name)}: {int(p.axis)},  "
                     f"# {python_comment(f'{p.leg.name}: {p.leg.dim}; {roles}')}")
    lines += [
        "    }",
        "    # equation -> (its legs, the position of its sharded leg; None: whole on every rank)",
        "    pins = {",
    ]
    for name, (legs, axis) in plan.pins().items():
        note = (f"  # {python_comment(f'all-reduce, sums over {reductions[name]}')}"
                if name in reductions else "")
        lines.append(f"        {python_string(name)}: ({int(legs)}, "
                     f"{'None' if axis is None else int(axis)}),{note}")
    lines += ["    }", "    # the dims split over the mesh, with their sizes", "    split = {"]
    tied = {a.dim: a for a in plan.aligned}
    for name, size in plan.split.items():
        if size is None:  # no param has a leg of it: nothing to split, nothing to check
            continue
        note = ""
        if name in tied:
            why = f"with {tied[name].partner}, through the grouping {tied[name].through}"
            note = f"  # {python_comment(why)}"
        lines.append(f"        {python_string(name)}: {int(size)},{note}")
    lines += ["    }"]
    lines += _RUNTIME.splitlines()
    return ["    " + line if line else "" for line in lines]


# The fixed part of the method (no text from the program in it).
_RUNTIME = '''\
    if mesh.ndim != 1:
        raise ValueError(f"parallelize shards over a 1-D mesh, got {mesh.ndim} dims; pass mesh['tp']")
    for dim, size in split.items():
        if size % mesh.size():
            raise ValueError(f"dim {dim} = {size} is not divisible by the mesh size {mesh.size()}")

    def partition(prefix, module, mesh):
        for name, param in list(module.named_parameters(recurse=False)):
            path = f"{prefix}.{name}" if prefix else name
            where = [Replicate()] if path not in sharded else [Shard(sharded[path])]
            # Contiguous first: DTensor reshapes a shard with a view, which a param stored
            # permuted (tndsl's layout pass) would not allow.
            module.register_parameter(name, nn.Parameter(
                distribute_tensor(param.data.contiguous(), mesh, where),
                requires_grad=param.requires_grad))

    def pin(legs, axis):
        def hook(module, args, value):
            if not isinstance(value, DTensor):
                return value
            # leading batch dims come first
            want = [Replicate()] if axis is None else [Shard(value.dim() - legs + axis)]
            return value if list(value.placements) == want else value.redistribute(mesh, want)
        return hook

    def whole(value):
        if isinstance(value, DTensor):
            return value.full_tensor()
        if isinstance(value, dict):
            return {k: whole(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return type(value)(whole(v) for v in value)
        return value

    def saved(tensor):  # what autograd saves for the backward: plain tensors replicated
        if isinstance(tensor, (DTensor, nn.Parameter)):
            return tensor
        return DTensor.from_local(tensor, mesh, [Replicate()], run_check=False)

    def enter(module, args):
        # The forward builds masks and positions as plain tensors: replicated.
        module._tndsl_parallel = (implicit_replication(),
                                  torch.autograd.graph.saved_tensors_hooks(saved, lambda t: t))
        for context in module._tndsl_parallel:
            context.__enter__()

    def leave(module, args, output):
        for context in reversed(module.__dict__.pop("_tndsl_parallel")):
            context.__exit__(None, None, None)
        return whole(output)

    class ShardLegs(ParallelStyle):
        def _apply(self, module, device_mesh):
            module = distribute_module(module, device_mesh, partition)
            module.register_forward_pre_hook(enter)
            module.register_forward_hook(leave, always_call=True)
            return module

    parallelize_module(self, mesh, ShardLegs())
    # Pin each equation at its hook point (named relative to the class that owns it),
    # ahead of any hook added later.
    modules = dict(self.named_modules())
    for path, module in modules.items():
        if not isinstance(module, HookPoint):
            continue
        owner = path.rpartition(".")[0]
        while owner and not hasattr(type(modules[owner]), "HOOK_ORDER"):
            owner = owner.rpartition(".")[0]
        name = f"{owner}.{module.tn_name}" if owner else module.tn_name
        if name in pins:
            module.register_forward_hook(pin(*pins[name]))
    return self
'''
