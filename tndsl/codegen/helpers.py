"""Fixed text the generated module defines below its classes, emitted only when used.

None of it depends on the `.tn` file: names from the file reach the generated module
only as identifiers (`codegen.names`) or `repr()` literals, never through here.
"""
from __future__ import annotations

from tndsl.codegen import decode as decode_forms, experts as expert_forms, fixed as fixed_forms, fused as fused_forms

HELPERS = {
    "HookPoint": '''
class HookPoint(nn.Identity):
    """A named intermediate (its `.tn` name, relative to the enclosing class): register
    plain PyTorch hooks on it to read or replace the value."""

    def __init__(self, name):
        super().__init__()
        self.tn_name = name

    @property
    def hooked(self):
        """Whether calling it would run a hook (its own or a global one, forward or
        backward): the forward then computes the values a fused kernel would skip."""
        return bool(self._forward_hooks or self._forward_pre_hooks
                    or self._backward_hooks or self._backward_pre_hooks
                    or _global_forward_hooks or _global_forward_pre_hooks
                    or _global_backward_hooks or _global_backward_pre_hooks)

    def extra_repr(self):
        return repr(self.tn_name)
''',
    "_param": '''
def _param(shape, init, *args, order=None):
    """A new nn.Parameter of `shape`, filled by `init` (an nn.init function) with `args`.
    `order`: the storage order of its legs, where the forward reads them merged in that
    order (tndsl.passes.layout): the same shape and values, strided as that order."""
    tensor = init(torch.empty(shape), *args)
    if order is not None:
        back = [order.index(k) for k in range(len(order))]
        tensor = tensor.permute(order).contiguous().permute(back)
    return nn.Parameter(tensor)
''',
    "_attach": '''
def _attach(module, path, child):
    """Register a submodule or parameter under a dotted path, making containers on the way."""
    *parents, leaf = path.split(".")
    for part in parents:
        if part not in module._modules:
            module.add_module(part, nn.Module())
        module = module._modules[part]
    if isinstance(child, nn.Parameter):
        module.register_parameter(leaf, child)
    else:
        module.add_module(leaf, child)
''',
    "_check_input": '''
class TokenIdError(ValueError, TypeError):
    """Token ids that cannot index the vocabulary: a ValueError (and a TypeError, where
    the dtype is not an integer one)."""


def _check_input(value, name, shape, ids, at_most=(), dtype=None):
    """Raise a clear error unless `value` is a tensor whose trailing dims match the
    declared legs (None: any size; a position listed in `at_most` may be shorter, as a
    sequence is), of an integer dtype if it holds ids (`ids`: the vocabulary's size, or
    True), and, for a float input given the params' `dtype`, of that dtype: PyTorch's
    layers do not mix them (autocast converts them itself)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"input {name} must be a torch.Tensor, got {type(value).__name__}")
    if ids and (value.dtype.is_floating_point or value.dtype.is_complex):
        valid = f" in [0, {ids})" if type(ids) is int else ""  # ids: the vocabulary's size
        raise TokenIdError(f"input {name} holds token ids{valid} and must be an integer tensor, got {value.dtype}")
    actual = tuple(value.shape[value.dim() - len(shape):]) if value.dim() >= len(shape) else None
    if actual is None or any(want is not None and (got > want if k in at_most else got != want)
                             for k, (want, got) in enumerate(zip(shape, actual))):
        want = ", ".join("?" if s is None else f"<={s}" if k in at_most else str(s)
                         for k, s in enumerate(shape))
        raise ValueError(f"input {name} must have shape (..., {want}), got {tuple(value.shape)}")
    if dtype is not None and value.dtype is not dtype and not torch.is_autocast_enabled(
            value.device.type):
        raise TypeError(f"input {name} is {value.dtype} but the model's params are {dtype}: "
                        f"convert the input ({name}.to({dtype})) or the model "
                        f"(model.to({value.dtype}))")
''',
    "_check_ids": '''
def _check_ids(ids, name, vocab):
    """The ids, checked to be in [0, vocab) with one min and one max: a negative id
    would silently read one of the last rows, and an id past the end would fail deep
    inside the forward. Ids of another integer dtype than int64 are returned as int64.
    Under torch.compile, where a branch on the ids' values would break the graph, the
    range is an assert op (a RuntimeError with the same message)."""
    valid = f"[0, {vocab})" if vocab is not None else "[0, ...)"
    if ids.dtype is torch.bool:
        raise TokenIdError(f"input {name} holds token ids in {valid} and must be an integer "
                           f"tensor, got torch.bool")
    if torch.compiler.is_compiling():
        kept = ids >= 0 if vocab is None else (ids >= 0) & (ids < vocab)
        torch._assert_async(kept.all(), f"input {name} holds token ids, which must be in {valid}")
        return ids.long()
    if ids.numel():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or (vocab is not None and high >= vocab):
            bad = low if low < 0 else high
            raise TokenIdError(f"input {name} holds token ids, which must be in {valid}; "
                               f"got {bad} (its ids range from {low} to {high})")
    return ids.long()
''',
    "_positions": '''
def _positions(t, axis, cache=None):
    """Index positions along `axis` (negative), shaped to broadcast over the later dims;
    with a decoding cache, after the positions it holds (this call's new ones)."""
    n = t.size(axis)
    p = torch.arange(n, device=t.device) if cache is None else cache.positions(n, t.device)
    return p.view((n,) + (1,) * (-axis - 1))
''',
    "_masked_softmax": '''
def _masked_softmax(t, keep, legs):
    """Softmax over the last `legs` dims where `keep` holds; masked entries, and rows with
    nothing kept, are exactly 0."""
    t = t.masked_fill(~keep, float("-inf"))
    return torch.softmax(t.flatten(-legs), dim=-1).view(t.shape).masked_fill(~keep, 0.0)
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
    "_gelu_bloom": '''
def _gelu_bloom(x):
    """BLOOM's GELU: x/2 (1 + tanh(0.79788456 x (1 + 0.044715 x²))), its own constant."""
    return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))
''',
    "_top_k": '''
def _top_k(t, k, legs):
    """t where it is among the k largest over the last `legs` dims (the first in order
    among equals: a stable sort), 0 elsewhere."""
    flat = t.reshape(t.shape[:t.dim() - legs] + (-1,))
    chosen = flat.sort(dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(flat).scatter(-1, chosen, flat.gather(-1, chosen)).reshape(t.shape)
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
_onednn_linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None) \\
    if torch.backends.mkldnn.is_available() else None
_onednn_faster = {}  # (x shape, weight shape and strides, bias?) -> oneDNN measured faster


def _linear(x, weight, bias=None):
    """F.linear(x, weight, bias). oneDNN's kernel (Inductor's on CPU) beats the BLAS
    behind F.linear on some CPUs and not on others, so the first float32 CPU call of each
    shape with no autograd graph to record (the kernel has no backward) times both and
    keeps the faster. TNDSL_AUTOTUNE=0 in the environment: F.linear always."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if (_onednn_linear is None or x.device.type != "cpu" or x.dtype is not torch.float32
            or x.dim() < 2 or torch.compiler.is_compiling()
            or any(type(t) is not torch.Tensor and type(t) is not nn.Parameter for t in tensors)
            or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            or os.environ.get("TNDSL_AUTOTUNE") == "0"):
        return F.linear(x, weight, bias)
    key = (x.shape, weight.shape, weight.stride(), bias is None)
    if key not in _onednn_faster:
        _onednn_faster[key] = _time_linear(x, weight, bias)
    if _onednn_faster[key]:
        return _onednn_linear(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _time_linear(x, weight, bias):
    """Whether oneDNN's kernel beats F.linear here: the best of two calls each, alternated."""
    best = [math.inf, math.inf]
    for k in (0, 1, 0, 1):
        start = time.perf_counter()
        if k == 0:
            _onednn_linear(x, weight, bias, "none", [], "")
        else:
            F.linear(x, weight, bias)
        best[k] = min(best[k], time.perf_counter() - start)
    return best[0] < best[1]
''',
    **fixed_forms.HELPERS,
    **fused_forms.HELPERS,
    **decode_forms.HELPERS,
    **expert_forms.HELPERS,
}
# What a helper needs imported beyond the file's own (math; torch, F, nn): standard
# library modules, and names from torch.
STDLIB_IMPORTS = {"_linear": ("os", "time")}
TORCH_IMPORTS = {"HookPoint": (
    "from torch.nn.modules.module import (_global_backward_hooks, _global_backward_pre_hooks,",
    "                                     _global_forward_hooks, _global_forward_pre_hooks)")}
# Emitted first: the classes below use it at construction.
FIRST = ("HookPoint",)


def helper_imports(names) -> list[str]:
    """The file's imports, for helpers `names`: the standard library's, then torch's."""
    stdlib = {"math"} | {m for n in names for m in STDLIB_IMPORTS.get(n, ())}
    lines = [f"import {m}" for m in sorted(stdlib)]
    lines += ["", "import torch", "import torch.nn.functional as F", "from torch import nn"]
    for name in sorted(names):
        lines += TORCH_IMPORTS.get(name, ())
    return lines


def helper_source(names) -> list[str]:
    """The helpers' texts, in a fixed order."""
    names = set(names)
    order = [n for n in FIRST if n in names] + sorted(n for n in names if n not in FIRST)
    return [HELPERS[name].strip("\n") for name in order]
