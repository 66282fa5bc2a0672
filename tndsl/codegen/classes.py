"""One generated `nn.Module` class: for the whole program (the root) or for a block
instance that is self-contained (`codegen.structure`).

Inside a class every name is relative to its instance path, so two instances of one
block produce the same text and share the class. Params are registered at their
relative paths (so `state_dict()` keys are the `.tn` paths), child instances are
attached at theirs, and every equation passes through a `HookPoint` submodule next to
its params (`blocks.3.attn.hook_pattern` for `blocks.3.attn.pattern`).
"""
from __future__ import annotations

import keyword
import re
from collections import Counter
from dataclasses import dataclass, field

from tndsl.lang import inits, ir, printer
from tndsl.codegen import decode as decode_code, experts as expert_code, fused as fused_code, \
    projections as projection_code
from tndsl.codegen.loops import Call, Loop, find_loops
from tndsl.codegen.lower import Lowering, Value
from tndsl.codegen.names import Namespace, NN_MODULE_ATTRS, GENERATED_ATTRS, sanitize
from tndsl.codegen.structure import Structure, parent_path, within
from tndsl.passes.fuse_attention import FusedAttention, fuse_attention
from tndsl.passes.fuse_experts import FusedExperts, fuse_experts
from tndsl.passes.fuse_layer_norm import FusedNorm, fuse_layer_norm
from tndsl.passes.fuse_projections import FusedProjections, fuse_projections
from tndsl.passes.layout import storage_orders
from tndsl.passes.liveness import insert_deletes
from tndsl.lang.text import python_comment, python_docstring

RESERVED_ATTRS = NN_MODULE_ATTRS | GENERATED_ATTRS


def relative(name: str, path: str) -> str:
    return name[len(path) + 1:] if path and within(name, path) and name != path else name


def relative_equation(eq: ir.Equation, path: str) -> ir.Equation:
    if not path:
        return eq
    rhs = ir.map_refs(eq.rhs, lambda r: ir.Ref(relative(r.name, path), r.indices, r.span))
    instance = "" if eq.instance == path else relative(eq.instance, path)
    return ir.Equation(relative(eq.name, path), eq.indices, rhs, eq.span, eq.legs,
                       eq.index_dims, instance)


def _plain_attribute(segment: str) -> bool:
    """Whether `self.<segment>` spells the attribute (else getattr or an index does)."""
    return attribute("self", segment, False) == f"self.{segment}"


def attribute(base: str, segment: str, is_list: bool) -> str:
    if is_list and segment.isdigit():
        return f"{base}[{segment}]"
    # `self.__x` would be name-mangled inside a class body: underscores go via getattr.
    if segment.isascii() and segment.isidentifier() and not keyword.iskeyword(segment) \
            and not segment.startswith("_"):
        return f"{base}.{segment}"
    return f"getattr({base}, {segment!r})"


@dataclass
class ClassSource:
    """A class's text with `{NAME}` for its name, and what its callers need."""

    text: str
    arguments: tuple[str, ...] = ()


@dataclass
class _Modules:
    """The submodule tree of one class: which paths are ModuleLists, and the attribute
    names taken at each path."""

    lists: dict[str, int] = field(default_factory=dict)
    taken: dict[str, Namespace] = field(default_factory=dict)

    def names(self, path: str) -> Namespace:
        if path not in self.taken:
            self.taken[path] = Namespace(set(RESERVED_ATTRS))
        return self.taken[path]

    def access(self, path: str) -> str:
        code, prefix = "self", ""
        for segment in path.split(".") if path else ():
            code = attribute(code, segment, prefix in self.lists)
            prefix = f"{prefix}.{segment}" if prefix else segment
        return code


class ClassBuilder:
    def __init__(self, file, path: str, batched_args: tuple[bool, ...] = ()):
        self.file = file
        self.path = path
        self.structure: Structure = file.structure
        self.instance = self.structure.instances.get(path)
        self.batched_args = batched_args
        # Incremental decoding (codegen.decode): the forward's `cache` argument.
        self.takes_cache = file.takes_cache(path)
        self.ns = Namespace({"self", decode_code.CACHE} if self.takes_cache else {"self"})
        self.lower = Lowering(file.options, self.ns)
        if self.takes_cache:
            self.lower.decoding(file.decode, path, decode_code.CACHE)
        self.modules = _Modules()
        self.hooks: dict[str, str] = {}       # equation (relative) -> code of its hook point
        self.hook_points: list[tuple[str, str]] = []  # (module path, .tn name), in order
        self.hook_order: list = []
        self.init_lines: list[str] = []
        # param (relative) -> (its line in init_lines, shape, init, args)
        self._param_lines: dict[str, tuple] = {}
        self._counts: dict[str, str] = {}
        self.comments: list[str] = []
        self.methods: list[str] = []          # further methods of the class, unindented
        self._call_outputs: set[str] = set()  # variables assigned a child module's result

    # ---- what this class computes ------------------------------------------------------
    def _items(self) -> tuple:
        path, structure = self.path, self.structure
        children = {structure.instances[p].output: p for p in structure.class_children(path)}
        own_bindings = {b.tensor for b in self.instance.bindings} if self.instance else set()
        items = []
        for eq in self.file.order:
            if eq.name in children:
                child = structure.instances[children[eq.name]]
                bindings = tuple(relative_equation(self.file.equations[b.tensor], path)
                                 for b in child.bindings if b.tensor in self.file.needed)
                items.append(Call(relative(child.path, path), child, bindings,
                                  relative(child.output, path)))
            elif structure.scope_of[eq.name] == path and eq.name not in own_bindings:
                items.append(relative_equation(eq, path))
        return tuple(items)

    def _params(self) -> list[ir.Tensor]:
        """Params registered by this class: those whose nearest callable instance it is."""
        instances = self.structure.instances
        return [t for t in self.file.params
                if self.structure.owner(parent_path(t.name, instances)) == self.path
                and within(t.name, self.path)]

    # ---- generation --------------------------------------------------------------------
    def build(self) -> ClassSource:
        file, lower = self.file, self.lower
        params = self._params()
        items = self._items()
        keep = frozenset(relative(o, self.path) for o in file.outputs)
        param_names = frozenset(relative(p.name, self.path) for p in params) | \
            frozenset(relative(p.name, self.path) for p in file.params if within(p.name, self.path))
        values = {getattr(i, "name", "") for i in items}
        if self.instance is not None:
            values |= {relative(b.tensor, self.path) for b in self.instance.bindings}
        values = frozenset(values)
        if "attention" in file.options.passes:
            groupings = frozenset(relative(t.name, self.path) for t in file.network.tensors
                                  if t.kind == "fixed" and t.fixed.function == "grouping")
            items = fuse_attention(items, keep, values, groupings, file.options.sizes,
                                   file.options.varying)
        if "layer_norm" in file.options.passes:
            items = fuse_layer_norm(items, keep, values, param_names)
        if "experts" in file.options.passes:
            # The experts' input may also be a float input (the root's own).
            items = fuse_experts(items, keep, values | {t.name for t in file.inputs
                                                        if t.onehot is None}, param_names)
        if "projections" in file.options.passes:
            # The shared activation may also be a float input (the root's own).
            sources = values | {t.name for t in file.inputs if t.onehot is None}
            items = fuse_projections(items, sources, param_names, file.runtime)
            if any(isinstance(item, FusedProjections) for item in items):
                self.methods += projection_code.APPLY_METHOD
        items, unrolled = find_loops(items, self._class_of, keep, self._group_members)
        self._plan_modules(params, items)
        # Arguments (a block) or inputs (the root), then params, then the items.
        if self.instance is None:
            arguments = [self.ns(f"input:{t.name}", t.name) for t in file.inputs]
            self._input_args = arguments
            for tensor, arg in zip(file.inputs, arguments):
                self._bind_input(tensor, arg)
            if self.takes_cache:
                self._check_cache()
            for tensor in file.inputs:
                self._extend_cache(tensor.name)
        else:
            arguments = []
            bindings = [b for b in self.instance.bindings if b.tensor in file.needed]
            for binding, batched in zip(bindings, self.batched_args):
                name = relative(binding.tensor, self.path)
                var = self.ns(f"value:{name}", binding.input)
                arguments.append(var)
                lower.read_dims(var, file.equations[binding.tensor].legs)
                lower.through_hook(var, self._hook(name, ""))
                lower.values[name] = Value(var, batched)
                self._extend_cache(name)
        for tensor in file.network.tensors:
            if tensor.kind == "fixed":  # applied where used (codegen.fixed), never stored
                # Declared in this block: its equations name it relative to the block.
                lower.values[relative(tensor.name, self.path)] = Value("", False, fixed=tensor)
        self._bind_params(items)
        for group, reason in sorted(unrolled.items()):
            self.comments.append(f"# `{python_comment(group)}` is unrolled: {python_comment(reason)}.")
        for k, item in enumerate(items):
            self._later = items[k + 1:]
            self._item(item)
            for name in _produces(item):
                self._extend_cache(name)
        if self.instance is None and self.takes_cache:
            self._advance_cache()
        if self.instance is None and (self.file.decode or self.file.decode_refused):
            self.file.helpers.add("KVCache")
            self.methods += decode_code.new_cache_method(
                None if self.file.decode else self.file.decode_refused)
        self._close_param_lines()
        body = lower.body() + [self._returns()]
        if "liveness" in file.options.passes:
            candidates = {v.var for v in lower.values.values()} | lower.temporaries
            candidates -= set(self._param_vars) | set(arguments)
            body = insert_deletes(body, candidates)
        return ClassSource(self._class_text(arguments, body), tuple(arguments))

    # ---- incremental decoding (codegen.decode) ---------------------------------------
    def _full(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _extend_cache(self, name: str) -> None:
        """After a cached value's hook point: the positions kept from earlier calls, then
        these."""
        if not self.takes_cache or name not in self.lower.values:
            return
        for cached, leg in self.file.decode.cached:
            if cached == self._full(name):
                value = self.lower.values[name]
                legs = self.file.equations[cached].legs if cached in self.file.equations \
                    else [l for l in _tensor(self.file, cached).legs
                          if l.name != _tensor(self.file, cached).onehot]
                if cached not in self.file.equations:
                    leg = [l.name for l in legs].index(_tensor(self.file, cached).legs[leg].name)
                self.file.helpers.add("KVCache")
                extend = (f"{decode_code.CACHE}.extend(self, {name!r}, {value.var}, "
                          f"{leg - len(legs)})")
                if cached not in self.file.decode.also_new:
                    self.lower.emit(f"if {decode_code.CACHE} is not None: {value.var} = {extend}")
                    continue
                # Read at the new positions too: the whole sequence gets its own name.
                every = self.ns(f"all:{name}", f"{name}_all")
                self.lower.emit(f"{every} = {value.var} if {decode_code.CACHE} is None "
                                f"else {extend}")
                self.lower.all_values[name] = Value(every, value.batched)

    def _new_positions(self) -> str | None:
        """The root's code for this call's number of new positions: the size of the
        first input's position leg."""
        for tensor, arg in zip(self.file.inputs, self._input_args):
            legs = [l for l in tensor.legs if l.name != tensor.onehot]
            for k, leg in enumerate(legs):
                if leg.dim == self.file.decode.dim:
                    return f"{arg}.shape[{k - len(legs)}]"
        return None

    def _check_cache(self) -> None:
        """The root, first: a static cache must have room for this call's positions."""
        n = self._new_positions()
        if n is not None:
            self.lower.emit(f"if {decode_code.CACHE} is not None: {decode_code.CACHE}.check({n})")

    def _advance_cache(self) -> None:
        """The root, before returning: the cache now holds this call's positions too."""
        n = self._new_positions()
        if n is not None:
            self.lower.emit(f"if {decode_code.CACHE} is not None: {decode_code.CACHE}.advance({n})")

    def _cache_argument(self, path: str) -> str:
        return f", {decode_code.CACHE}={decode_code.CACHE}" \
            if self.takes_cache and self.file.takes_cache(path) else ""

    def _returns(self) -> str:
        if self.instance is not None:
            return f"return {self.lower.values[relative(self.instance.output, self.path)].var}"
        returns = [self.lower.values[o].var for o in self.file.outputs]
        if len(returns) == 1:
            return f"return {returns[0]}"
        pairs = ", ".join(f"{o!r}: {v}" for o, v in zip(self.file.outputs, returns))
        return f"return {{{pairs}}}"

    # ---- modules: params, children, hook points ---------------------------------------
    def _class_of(self, call: Call) -> str:
        return self._child_class(call)[0]

    def _child_class(self, call: Call) -> tuple[str, ClassSource]:
        batched = tuple(self._batched(eq) for eq in call.bindings)
        return self.file.class_for(call.instance.path, batched)

    def _batched(self, eq: ir.Equation) -> bool:
        """Whether a value may carry batch dims: it depends on an input."""
        return any(self.file.batched(f"{self.path}.{r.name}" if self.path else r.name)
                   for r in ir.refs(eq.rhs))

    def _group_members(self, group: str) -> list[str]:
        """The paths directly under `group` that anything of this class lives at."""
        prefix, members = group + ".", set()
        names = [relative(p, self.path) for p in self.structure.instances
                 if within(p, self.path) and p != self.path]
        names += [relative(t.name, self.path) for t in self._params()]
        for name in names:
            if name.startswith(prefix):
                members.add(prefix + name[len(prefix):].split(".")[0])
        return sorted(members)

    def _plan_modules(self, params: list[ir.Tensor], items) -> None:
        """Containers holding numbered children 0..n-1 become ModuleLists."""
        paths = set()
        for param in params:
            paths.add(relative(param.name, self.path))
        for p in self.structure.instances:
            if within(p, self.path) and p != self.path:
                paths.add(relative(p, self.path) + ".")
        children: dict[str, set[str]] = {}
        for full in paths:
            parts = full.rstrip(".").split(".")
            for k in range(len(parts)):
                children.setdefault(".".join(parts[:k]), set()).add(parts[k])
        for container, names in children.items():
            if container and all(n.isdigit() for n in names) and \
                    sorted(int(n) for n in names) == list(range(len(names))):
                self.modules.lists[container] = len(names)
            taken = self.modules.names(container)
            for name in sorted(names):
                taken(f"member:{name}", name)
        loops = [item for item in items if isinstance(item, Loop)]
        for container in sorted(self.modules.lists, key=lambda c: c.count(".")):
            if any(loop.group == container for loop in loops):
                continue
            n = self.modules.lists[container]
            self._attach(container, f"nn.ModuleList(nn.Module() for _ in range({n}))")
        for param in params:
            shape = tuple(self.file.sizes[leg.dim] for leg in param.legs)
            init, args = (param.init.name, param.init.args) if param.init else inits.DEFAULT
            # Its place is kept; the line is written once the forward is lowered, when
            # the layout pass has chosen the param's storage order.
            self._param_lines[relative(param.name, self.path)] = (
                len(self.init_lines), shape, init, tuple(args))
            self.init_lines.append("")
        for loop in loops:
            name, _ = self.file.class_for(loop.calls[0].instance.path,
                                          tuple(self._loop_batched(loop)))
            # The loop count appears once: files for 12 and 96 layers differ only here.
            count = self.ns(f"count:{loop.group}", f"n_{sanitize(loop.group)}")
            self._counts[loop.group] = count
            self.init_lines.append(f"{count} = {len(loop.calls)}")
            self._attach(loop.group, f"nn.ModuleList({name}() for _ in range({count}))")

    def _close_param_lines(self) -> None:
        """Each param's line, with the storage order passes.layout chose for it."""
        orders = storage_orders(self.lower.weight_merges) \
            if "layout" in self.file.options.passes else {}
        made: set[str] = set()  # plain containers created so far (`self.embed = nn.Module()`)
        for name, (line, shape, init, args) in self._param_lines.items():
            code = _new_param(shape, init, args, orders.get(name))
            if code.startswith("_param("):
                self.file.helpers.add("_param")
            *parents, leaf = name.split(".")
            prefixes = [".".join(parents[:k + 1]) for k in range(len(parents))]
            plain = all(_plain_attribute(part) for part in name.split(".")) and \
                not any(p in self.modules.lists for p in prefixes)
            if plain:
                lines = [f"self.{p} = nn.Module()" for p in prefixes if p not in made]
                made.update(prefixes)
                self.init_lines[line] = "\n".join(lines + [f"self.{name} = {code}"])
            elif parents:
                self.file.helpers.add("_attach")
                self.init_lines[line] = f"_attach(self, {name!r}, {code})"
            else:
                self.init_lines[line] = f"self.register_parameter({name!r}, {code})"

    def _loop_batched(self, loop: Loop) -> list[bool]:
        return [self._batched(eq) for eq in loop.calls[0].bindings]

    def _attach(self, path: str, code: str) -> None:
        if "." not in path:
            plain = _plain_attribute(path)
            self.init_lines.append(f"self.{path} = {code}" if plain else
                                   f"self.add_module({path!r}, {code})")
        else:
            self.file.helpers.add("_attach")
            self.init_lines.append(f"_attach(self, {path!r}, {code})")

    def _hook(self, name: str, container: str | None = None) -> str:
        """The hook point of equation `name` (relative): registered now, code returned."""
        if name in self.hooks:
            return self.hooks[name]
        if container is None:
            container = self._container(name)
        leaf = name[len(container) + 1:] if container else name
        attr = self.modules.names(container)(f"hook:{leaf}", "hook_" + sanitize(leaf))
        path = f"{container}.{attr}" if container else attr
        self.file.helpers.add("HookPoint")
        self._attach(path, f"HookPoint({name!r})")
        self.hook_order.append(path)
        code = self.modules.access(path)
        self.hooks[name] = code
        return code

    def _container(self, name: str) -> str:
        eq = self.file.relative_equations(self.path).get(name)
        return eq.instance if eq is not None else ""

    # ---- forward ---------------------------------------------------------------------
    def _bind_input(self, tensor: ir.Tensor, arg: str) -> None:
        lower = self.lower
        self.file.helpers.add("_check_input")
        legs = [leg for leg in tensor.legs if leg.name != tensor.onehot]
        shape = tuple(self.file.sizes.get(leg.dim) for leg in legs)
        at_most = tuple(k for k, leg in enumerate(legs) if leg.dim in self.file.options.varying)
        ids = tensor.onehot is not None
        vocab = self.file.sizes.get(next(l.dim for l in tensor.legs
                                         if l.name == tensor.onehot)) if ids else None
        extra = f", at_most={at_most!r}" if at_most else ""
        if not ids and self.file.params:  # a float input must have the params' dtype
            first = self.modules.access(relative(self.file.params[0].name, self.path))
            extra += f", dtype={first}.dtype"
        lower.emit(f"_check_input({arg}, {tensor.name!r}, {shape!r}, "
                   f"ids={vocab if ids and vocab is not None else ids}{extra})")
        if ids:  # token ids checked against the vocabulary: one min and one max per call
            self.file.helpers.add("_check_ids")
            lower.emit(f"{arg} = _check_ids({arg}, {tensor.name!r}, {vocab!r})")
        lower.read_dims(arg, legs)
        onehot = [leg.name for leg in tensor.legs].index(tensor.onehot) if ids else None
        lower.values[tensor.name] = Value(arg, True, onehot)

    def _bind_params(self, items) -> None:
        """Each param used is read where it is used, as an attribute (`self.W_Q`), sliced
        where a leg's dim is shorter at run time."""
        used: dict[str, None] = {}
        for item in items:
            if isinstance(item, ir.Equation):
                names = [r.name for r in ir.refs(item.rhs)]
            elif isinstance(item, Call):
                names = list(item.reads)
            elif isinstance(item, Loop):
                names = []
            else:
                names = list(item.reads) + [r.name for eq in _equations(item)
                                            for r in ir.refs(eq.rhs)]
            for name in names:
                if name in self.file.param_by_relative(self.path):
                    used[name] = None
        self._param_vars = []
        for name in used:
            param = self.file.param_by_relative(self.path)[name]
            code = self.modules.access(name)
            slices = [f":{self.lower.runtime_dims[leg.dim]}"
                      if leg.dim in self.file.options.varying and leg.dim in self.lower.runtime_dims
                      else ":" for leg in param.legs]
            rows = self._position_rows(name, param, code)
            if rows is not None:  # a local: the rows are gathered once per call
                var = self.ns(f"value:{name}", name)
                plain = code
                if any(s != ":" for s in slices):
                    while slices[-1] == ":":
                        slices.pop()
                    plain += f"[{', '.join(slices)}]"
                self.lower.emit(f"{var} = {plain} if {decode_code.CACHE} is None else {rows}")
                self._param_vars.append(var)
                self.lower.values[name] = Value(var, True)
                continue
            if any(s != ":" for s in slices):
                while slices[-1] == ":":
                    slices.pop()
                code += f"[{', '.join(slices)}]"
            self._param_vars.append(code)
            self.lower.param_reads.add(code)
            if all(s == ":" for s in slices):
                self.lower.params[code] = name
            self.lower.values[name] = Value(code, False)

    def _position_rows(self, name: str, param: ir.Tensor, code: str) -> str | None:
        """A position-indexed param read at this call's positions (codegen.decode)."""
        plan = self.file.decode
        if not self.takes_cache:
            return None
        roles = plan.roles.get(param.name, ())
        for k, (leg, role) in enumerate(zip(param.legs, roles)):
            if role is not None and leg.dim in self.lower.runtime_dims:
                self.file.helpers.add("_position_rows")
                every = ", every=True" if role == "all" else ""
                return (f"_position_rows({code}, {k - len(param.legs)}, "
                        f"{self.lower.runtime_dims[leg.dim]}, {decode_code.CACHE}{every})")
        return None

    def _item(self, item) -> None:
        lower = self.lower
        if isinstance(item, ir.Equation):
            var = self.ns(f"value:{item.name}", item.name)
            ref = _plain_ref(item)
            later = {r for rest in self._later for r in _reads(rest)}
            # `final = ln_final.out`, where nothing else reads ln_final.out: the call
            # that made it assigns `final` itself.
            renamed = ref if ref is not None and ref not in later and \
                ref not in self.file.outputs else None
            if renamed is None:
                self._inline_call(item, later)
            lower.equation(item, var, self._hook(item.name), renamed)
        elif isinstance(item, Call):
            self._call(item)
        elif isinstance(item, Loop):
            self._loop(item)
        elif isinstance(item, FusedAttention):
            for eq in (item.scores, item.pattern, item.out):
                self._hook(eq.name)
            var = self.ns(f"value:{item.name}", item.name)
            fused_code.attention(lower, item, var, self.hooks)
        elif isinstance(item, FusedNorm):
            for eq in item.equations:
                self._hook(eq.name)
            var = self.ns(f"value:{item.name}", item.name)
            fused_code.norm(lower, item, var, self.hooks)
        elif isinstance(item, FusedExperts):
            for eq in item.equations:
                self._hook(eq.name)
            var = self.ns(f"value:{item.name}", item.name)
            expert_code.experts(lower, item, var, self.hooks)
        elif isinstance(item, FusedProjections):
            for name in item.names:
                self._hook(name)
            variables = [self.ns(f"value:{n}", n) for n in item.names]
            projection_code.projections(lower, item, variables, self.hooks)
        else:  # pragma: no cover - the passes make only these
            raise TypeError(item)

    def _inline_call(self, eq: ir.Equation, later: set[str]) -> None:
        """`resid + self.attn(...)`: a child module's result that the statement just
        before assigned, read once by `eq` and by nothing after it, is read in place."""
        lower = self.lower
        reads = Counter(r.name for r in ir.refs(eq.rhs))
        for name, count in reads.items():
            value = lower.values.get(name)
            if value is None or value.var not in self._call_outputs or count != 1 or \
                    name in later or name in self.file.outputs:
                continue
            prefix = "    " * lower.indent + f"{value.var} = "
            if lower.lines and lower.lines[-1].startswith(prefix):
                lower.values[name] = Value(lower.lines.pop()[len(prefix):], value.batched)
                return

    def _arguments(self, call: Call) -> list[str]:
        lower, args = self.lower, []
        later = {r for item in self._later for r in _reads(item)} | set(self.file.outputs)
        for k, eq in enumerate(call.bindings):
            ref = _plain_ref(eq)
            if ref is not None and ref in lower.values and lower.values[ref].onehot is None:
                var = lower.values[ref].var
                prefix = "    " * lower.indent + f"{var} = "
                # `self.attn(self.ln1(x))`: the one argument the call just before made,
                # read by nothing else.
                if len(call.bindings) == 1 and var in self._call_outputs and \
                        ref not in later and lower.lines[-1].startswith(prefix):
                    var = lower.lines.pop()[len(prefix):]
                args.append(var)
                continue
            lower.index_dims = {leg.name: leg.dim for leg in eq.index_dims}
            lower.emit(f"# {python_comment(printer.equation_line(eq))}")
            expr, _ = lower._sum(eq.rhs, eq.indices, eq.name, eq.span)
            args.append(lower._temp(eq.name, expr))
        return args

    def _call(self, call: Call) -> None:
        lower = self.lower
        name, _ = self._child_class(call)
        batched = any(self._batched(eq) for eq in call.bindings)
        args = self._arguments(call)
        var = self.ns(f"value:{call.output}", call.output)
        self._attach(call.path, f"{name}()")
        lower.emit(f"{var} = {self.modules.access(call.path)}({', '.join(args)}"
                   f"{self._cache_argument(call.instance.path)})")
        self._call_outputs.add(var)
        self.hook_order.append(call.path)
        lower.values[call.output] = Value(var, batched)

    def _loop(self, loop: Loop) -> None:
        lower = self.lower
        name, _ = self.file.class_for(loop.calls[0].instance.path, tuple(self._loop_batched(loop)))
        first = lower.values[loop.first]
        stem = loop.versions[-1][0] if loop.versions else loop.calls[0].output.rsplit(".", 1)[-1]
        later = {r for item in self._later for r in _reads(item)}
        if loop.first in later or loop.first in self.file.outputs or \
                loop.first not in self.file.relative_equations(self.path):
            var = self.ns(f"loop:{loop.group}", stem)  # the first value is still needed
        else:
            var = first.var
        hook_lists = []
        for stem_j, start in loop.versions:
            attr = self.modules.names("")(f"versions:{stem_j}", f"hook_{sanitize(stem_j)}_versions")
            self.file.helpers.add("HookPoint")
            self._attach(attr, f"nn.ModuleList(HookPoint({stem_j + '@'!r} + str(i + {start})) "
                               f"for i in range({self._counts[loop.group]}))")
            hook_lists.append(attr)
        self.hook_order.append((loop.group, *hook_lists))
        groups = self.modules.access(loop.group)
        block = self.ns(f"loop-block:{loop.group}", "block")
        targets = [block] + [self.ns(f"loop-hook:{a}", f"hook_{sanitize(stem_j)}")
                             for a, (stem_j, _) in zip(hook_lists, loop.versions)]
        iterables = [groups] + [f"self.{a}" for a in hook_lists]
        lower.emit(f"# {python_comment(loop.group)}: one {name} each, in order")
        if var != first.var:
            lower.emit(f"{var} = {first.var}")
        if len(iterables) == 1:
            lower.emit(f"for {block} in {groups}:")
        else:
            lower.emit(f"for {', '.join(targets)} in zip({', '.join(iterables)}):")
        args = [var if k == loop.carry else lower.values[f].var
                for k, f in enumerate(loop.fixed)]
        lower.indent += 1
        lower.emit(f"{var} = {block}({', '.join(args)}"
                   f"{self._cache_argument(loop.calls[0].instance.path)})")
        for target in targets[1:]:
            lower.through_hook(var, target)
        lower.indent -= 1
        batched = first.batched or any(lower.values[f].batched for f in loop.fixed if f)
        lower.values[loop.last] = Value(var, batched)

    # ---- text ------------------------------------------------------------------------
    def _class_text(self, arguments: list[str], body: list[str]) -> str:
        file = self.file
        if self.instance is None:
            doc_inputs = ", ".join(f"{a} ({_legs_doc(t)})" for a, t in zip(arguments, file.inputs))
            doc_outputs = ", ".join(f"{o}{printer.legs_decl(file.equations[o].legs)}"
                                    for o in file.outputs)
            plural = " (a dict by name)" if len(file.outputs) > 1 else ""
            doc = [f'    """Inputs: {python_docstring(doc_inputs or "none")}.',
                   f'    Returns: {python_docstring(doc_outputs)}{plural}.',
                   '    Leading batch dimensions of the inputs are carried through. Every equation',
                   '    passes through a HookPoint submodule (see tndsl.interp.hooks)."""']
        else:
            block = self.instance.block
            doc = [f'    """Block `{sanitize(block)}`: {", ".join(arguments) or "no arguments"} '
                   f'-> its result."""']
        lines = ["class {NAME}(nn.Module):", *doc, ""]
        lines += [f"    HOOK_ORDER = {tuple(self.hook_order)!r}", ""]
        lines += ["    def __init__(self):", "        super().__init__()"]
        lines += ["        " + line for text in self.init_lines for line in text.split("\n")]
        extra = [f"{decode_code.CACHE}=None"] if self.takes_cache else []
        lines += ["", f"    def forward({', '.join(['self', *arguments, *extra])}):"]
        lines += ["        " + line for line in self.comments]
        lines += ["        " + line if line else "" for line in body]
        if self.methods:
            lines += [""] + ["    " + line for line in self.methods]
        return "\n".join(lines) + "\n"


def _produces(item) -> list[str]:
    """The names of the values an item binds (for the cache extends after it)."""
    if isinstance(item, ir.Equation):
        return [item.name]
    if isinstance(item, Call):
        return [item.output]
    if isinstance(item, FusedProjections):
        return list(item.names)
    return [item.name] if isinstance(getattr(item, "name", None), str) else []


def _tensor(file, name: str) -> ir.Tensor:
    return next(t for t in file.network.tensors if t.name == name)


# nn.init's function for each initialiser of tndsl.lang.inits, and the tensor it fills
# where no storage order asks for `_param`.
_NN_INIT = {"normal": "normal_", "uniform": "uniform_", "constant": "constant_",
            "zeros": "zeros_", "ones": "ones_"}
_FILLED = {"zeros": "torch.zeros({})", "ones": "torch.ones({})", "constant": "torch.full(({}), {})"}


def _new_param(shape: tuple[int, ...], init: str, args: tuple, order) -> str:
    """The expression making a param: `nn.Parameter(torch.zeros(768))` for a constant
    one, else `_param(shape, nn.init.<init>_, *args, order=...)`."""
    if init == "normal":  # normal(std) or normal(mean, std); nn.init takes (mean, std)
        args = tuple(args) if len(args) == 2 else (0.0, args[0] if args else 0.02)
    if init in _FILLED and order is None:
        sizes = ", ".join(str(n) for n in shape) if shape else "()"
        filled = _FILLED[init].format(sizes + ("," if len(shape) == 1 and init == "constant"
                                               else ""), *(repr(float(a)) for a in args))
        return f"nn.Parameter({filled})"
    rest = "".join(f", {float(a)!r}" for a in args)
    ordered = f", order={order!r}" if order is not None else ""
    return f"_param({shape!r}, nn.init.{_NN_INIT[init]}{rest}{ordered})"


def _plain_ref(eq: ir.Equation) -> str | None:
    if len(eq.rhs.terms) == 1:
        term = eq.rhs.terms[0]
        if term.coefficient == 1 and len(term.factors) == 1 and \
                isinstance(term.factors[0], ir.Ref) and \
                tuple(term.factors[0].indices) == tuple(eq.indices):
            return term.factors[0].name
    return None


def _reads(item) -> list[str]:
    if isinstance(item, ir.Equation):
        return [r.name for r in ir.refs(item.rhs)]
    return list(getattr(item, "reads", ()))


def _equations(item) -> list[ir.Equation]:
    if isinstance(item, FusedAttention):
        return [item.scores, item.pattern, item.out]
    if isinstance(item, (FusedNorm, FusedProjections, FusedExperts)):
        return list(item.equations)
    return []


def _legs_doc(tensor: ir.Tensor) -> str:
    if tensor.onehot is None:
        return "[" + ", ".join(f"{l.name}: {l.dim}" for l in tensor.legs) + "]"
    rest = [l for l in tensor.legs if l.name != tensor.onehot]
    dim = next(l.dim for l in tensor.legs if l.name == tensor.onehot)
    return "[" + ", ".join(f"{l.name}: {l.dim}" for l in rest) + f"] ids in {dim}"
