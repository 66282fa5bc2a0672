"""Fixed text the generated module defines above its classes, emitted only when used.

None of it depends on the `.tn` file: names from the file reach the generated module
only as identifiers (`codegen.names`) or `repr()` literals, never through here.
"""
from __future__ import annotations

from tndsl.codegen import decode as decode_forms, fixed as fixed_forms, fused as fused_forms

HELPERS = {
    "HookPoint": '''
# The global hook dicts, by name: torch mutates them in place and never rebinds them. A
# global name costs torch.compile one guard where `nn.modules.module._global_...` cost a
# chain of them at every hook point (a third of its trace time, measured).
from torch.nn.modules.module import (_global_backward_hooks, _global_backward_pre_hooks,
                                     _global_forward_hooks, _global_forward_pre_hooks)

class HookPoint(nn.Identity):
    """A named intermediate (its `.tn` name, relative to the enclosing generated class).
    Register forward hooks on it with plain PyTorch to read or replace the value
    (through its `register_*` methods, which also set `HookPoint.registered`)."""

    # Set by the first hook registered on any hook point of this file, and never reset
    # (a removed hook leaves it set, which costs only the per-point tests). Until then
    # a forward skips all its hook points on one test (`_hooks_on()`) instead of testing
    # each; torch.compile guards on it, so a hook registered after compiling recompiles.
    registered = False

    def __init__(self, name):
        super().__init__()
        self.tn_name = name

    def register_forward_hook(self, *args, **kwargs):
        HookPoint.registered = True
        return super().register_forward_hook(*args, **kwargs)

    def register_forward_pre_hook(self, *args, **kwargs):
        HookPoint.registered = True
        return super().register_forward_pre_hook(*args, **kwargs)

    def register_full_backward_hook(self, *args, **kwargs):
        HookPoint.registered = True
        return super().register_full_backward_hook(*args, **kwargs)

    def register_full_backward_pre_hook(self, *args, **kwargs):
        HookPoint.registered = True
        return super().register_full_backward_pre_hook(*args, **kwargs)

    def register_backward_hook(self, *args, **kwargs):
        HookPoint.registered = True
        return super().register_backward_hook(*args, **kwargs)

    @property
    def hooked(self):
        """A hook that calling this module would run is attached, here or globally,
        forward or backward: the generated code calls the hook point only then (a module
        call costs as much as a small matmul), and fused paths that skip this value are
        not taken."""
        return bool(self._forward_hooks or self._forward_pre_hooks
                    or self._backward_hooks or self._backward_pre_hooks
                    or _global_forward_hooks or _global_forward_pre_hooks
                    or _global_backward_hooks or _global_backward_pre_hooks)

    def extra_repr(self):
        return repr(self.tn_name)


def _hooks_on():
    """Whether any hook point may have a hook to run: one was registered on a hook point
    of this file, or a global module hook is set. The forward tests each hook point
    (`.hooked`) only then."""
    return bool(HookPoint.registered or _global_forward_hooks or _global_forward_pre_hooks
                or _global_backward_hooks or _global_backward_pre_hooks)
''',
    "_param": '''
def _param(module, path, shape, init, args, order=None):
    """Register an nn.Parameter under a dotted path, creating containers on the way.
    `order`: the storage order of its legs, where the forward reads it merged in that
    order (tndsl.passes.layout): same shape and values, strides of the permuted order."""
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
        if order is not None:  # initialised in declared order: the same values either way
            stored = torch.empty([shape[k] for k in order])
            tensor = stored.permute([order.index(k) for k in range(len(order))]).copy_(tensor)
    module.register_parameter(leaf, nn.Parameter(tensor))
''',
    "_attach": '''
def _attach(module, path, child):
    """Register a submodule under a dotted path, creating containers on the way."""
    *parents, leaf = path.split(".")
    for part in parents:
        if part not in module._modules:
            module.add_module(part, nn.Module())
        module = module._modules[part]
    module.add_module(leaf, child)
''',
    "_check_input": '''
def _check_input(value, name, shape, ids, at_most=()):
    """Trailing dims must match the declared legs (None: any size; a position listed in
    `at_most` may be shorter, as a sequence is); ids must be integers. The forward tests
    the common case inline and calls this for the rest."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"input {name} must be a torch.Tensor, got {type(value).__name__}")
    if ids and (value.dtype.is_floating_point or value.dtype.is_complex):
        raise TypeError(f"input {name} holds token ids and must be an integer tensor, got {value.dtype}")
    actual = tuple(value.shape[value.dim() - len(shape):]) if value.dim() >= len(shape) else None
    if actual is None or any(want is not None and (got > want if k in at_most else got != want)
                             for k, (want, got) in enumerate(zip(shape, actual))):
        want = ", ".join("?" if s is None else f"<={s}" if k in at_most else str(s)
                         for k, s in enumerate(shape))
        raise ValueError(f"input {name} must have shape (..., {want}), got {tuple(value.shape)}")
''',
    "_positions": '''
def _positions(t, axis, cache=None):
    """Index positions along `axis` (negative), shaped to broadcast over the later dims;
    with a decoding cache, after the positions it holds (this call's new ones)."""
    n = t.size(axis)
    start = 0 if cache is None else cache.length
    return torch.arange(start, start + n, device=t.device).view((n,) + (1,) * (-axis - 1))
''',
    "_topk": '''
def _topk(t, legs, k):
    """The `k` largest entries over the last `legs` dims kept, the others 0."""
    flat = t.flatten(-legs) if legs > 1 else t
    k = min(k, flat.size(-1))
    values, indices = flat.topk(k, dim=-1)
    kept = torch.zeros_like(flat).scatter(-1, indices, values)
    return kept.view(t.shape) if legs > 1 else kept
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
    "_packed": '''
def _packed(module, key, params, pack):
    """`pack()` builds one weight (and bias) from `params` for a fused projection. Kept on
    `module` and reused while the params are the same tensors, unchanged (version counter,
    storage, dtype, device) and no autograd graph through them is needed; built per call
    under torch.compile (which traces it into its graph). None, and the caller computes
    each projection on its own, for tensor subclasses (DTensor shards: packing would
    gather them) and under grad (packing per call costs more than it saves)."""
    if not all(type(p) is nn.Parameter or type(p) is torch.Tensor for p in params):
        return None
    if torch.compiler.is_compiling():
        return pack()
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return None
    try:
        stamp = (torch.is_inference_mode_enabled(),) + tuple(
            (id(p), p._version, p.data_ptr(), p.dtype, p.device) for p in params)
    except RuntimeError:  # inference tensors have no version counter: nothing to trust
        return pack()
    cache = module.__dict__.setdefault("_tndsl_packed", {})
    entry = cache.get(key)
    if entry is None or entry[0] != stamp:
        # The params are held with the stamp, so their ids cannot be reused meanwhile.
        entry = cache[key] = (stamp, params, pack())
    return entry[2]
''',
    "_linear": '''
# oneDNN's linear kernel (the one Inductor uses on CPU), where this torch has it: on some
# CPUs it is much faster than the BLAS behind F.linear (docs/performance.md). It has no
# autograd formula, so it runs only where no graph is needed.
_onednn_linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None) \\
    if torch.backends.mkldnn.is_available() else None
_PLAIN = (torch.Tensor, nn.Parameter)


def _linear(x, weight, bias=None):
    """F.linear(x, weight, bias); for plain float32 CPU tensors of at least four rows with
    no autograd graph to record, through oneDNN's kernel (for one or two rows, a decoding
    step, BLAS's matrix-vector product is faster: docs/performance.md)."""
    if (x.dtype is torch.float32 and x.device.type == "cpu" and type(x) is torch.Tensor
            and type(weight) in _PLAIN
            and (bias is None or type(bias) in _PLAIN) and x.dim() >= 2
            and x.numel() >= 4 * x.size(-1)  # a row or two (a decoding step): BLAS's gemv
            and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad)))):
        return _onednn_linear(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


if _onednn_linear is None:  # nothing to choose between: no tests per call
    _linear = F.linear
''',
    **fixed_forms.HELPERS,
    **fused_forms.HELPERS,
    **decode_forms.HELPERS,
}
HELPER_DEPENDENCIES = {"_masked_softmax": ("_softmax",), **decode_forms.DEPENDENCIES}
# Emitted first: the classes below use it at construction.
FIRST = ("HookPoint",)


def helper_source(names) -> list[str]:
    """The helpers' text, dependencies included, in a fixed order."""
    names = set(names)
    for name in list(names):
        names.update(HELPER_DEPENDENCIES.get(name, ()))
    order = [n for n in FIRST if n in names] + sorted(n for n in names if n not in FIRST)
    lines = []
    for name in order:
        lines.append(HELPERS[name].strip("\n"))
        lines.append("")
    return lines
