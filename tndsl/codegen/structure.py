"""Which block instances become their own `nn.Module` class, and which are inlined.

An instance is *callable* (its own class, called with its arguments and returning its
result) when it is self-contained: its equations read only its arguments, its own
params and its own intermediates; nothing outside reads its intermediates except its
result; and every run-time size it needs can be read from its arguments. Otherwise its
equations are emitted in the enclosing class (its params and hook points still live at
its path), and the reason is written into the generated code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from tndsl.lang import ir


@dataclass(frozen=True)
class Structure:
    instances: Mapping[str, ir.Instance]   # every instance by path
    callable: frozenset[str]               # paths of instances that get a class
    reasons: Mapping[str, str]             # path -> why it is inlined
    scope_of: Mapping[str, str]            # equation -> path of the class computing it

    def owner(self, path: str) -> str:
        """The nearest callable instance at or above `path` ('' is the root)."""
        while path and path not in self.callable:
            path = parent_path(path, self.instances)
        return path

    def class_children(self, path: str) -> list[str]:
        """Callable instances whose nearest callable ancestor is `path`, in network order."""
        return [p for p in self.instances if p in self.callable and p != path
                and self.owner(parent_path(p, self.instances)) == path]


def parent_path(path: str, instances: Mapping[str, ir.Instance]) -> str:
    """The instance enclosing `path` ('' at the top level)."""
    parts = path.split(".")
    for k in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:k])
        if prefix in instances:
            return prefix
    return ""


def within(name: str, path: str) -> bool:
    return not path or name == path or name.startswith(path + ".")


def analyse(network: ir.Network, order: Sequence[ir.Equation], outputs: Sequence[str],
            runtime_dims: set[str]) -> Structure:
    instances = {i.path: i for i in network.instances}
    params = {t.name: t for t in network.tensors if t.kind == "param"}
    # Fixed tensors hold no state and are applied where they are used: any block reads them.
    fixed = {t.name for t in network.tensors if t.kind == "fixed"}
    needed = {eq.name: eq for eq in order}
    users: dict[str, set[str]] = {}
    for eq in order:
        for ref in ir.refs(eq.rhs):
            users.setdefault(ref.name, set()).add(eq.name)
    callable_, reasons = set(), {}
    for path, instance in instances.items():
        reason = _why_not_callable(instance, needed, users, params, fixed, set(outputs),
                                   runtime_dims)
        if reason is None:
            callable_.add(path)
        else:
            reasons[path] = reason
    structure = Structure(instances, frozenset(callable_), reasons, {})
    scope_of = {eq.name: structure.owner(eq.instance) for eq in order}
    return Structure(instances, frozenset(callable_), reasons, scope_of)


def _why_not_callable(instance: ir.Instance, needed, users, params, fixed, outputs,
                      runtime_dims) -> str | None:
    path = instance.path
    if instance.output not in needed:
        return "its result is not computed"
    bindings = {b.tensor for b in instance.bindings}
    body = [eq for name, eq in needed.items() if within(eq.instance, path)]
    names = {eq.name for eq in body}
    available = set()
    for binding in instance.bindings:
        if binding.tensor in needed:
            available.update(leg.dim for leg in needed[binding.tensor].legs)
    for eq in body:
        if eq.name in bindings:
            continue
        for ref in ir.refs(eq.rhs):
            if ref.name == ir.ONES or ref.name in names or ref.name in fixed:
                continue
            if ref.name in params and within(ref.name, path):
                continue
            return f"`{eq.name}` reads `{ref.name}` from outside the block"
        for leg in eq.index_dims or ():
            if leg.dim in runtime_dims and leg.dim not in available:
                return f"its size `{leg.dim}` is known only at run time and no argument has it"
    for eq in body:
        if eq.name == instance.output:
            continue
        if eq.name in outputs:
            return f"`{eq.name}` is an output"
        outside = sorted(u for u in users.get(eq.name, ()) if u not in names)
        if outside:
            return f"`{outside[0]}` reads `{eq.name}` from outside the block"
    for name, param in params.items():
        if within(name, path):
            for leg in param.legs:
                if leg.dim in runtime_dims and leg.dim not in available:
                    return (f"param `{name}` has size `{leg.dim}`, known only at run time, "
                            "and no argument has it")
    return None
