"""Incremental decoding in generated code: the run-time half of `passes.decode`.

The root module's forward takes `cache=None`; `model.new_cache()` makes one (a
`KVCache`, defined in the generated file). Passing the same cache to each call decodes
incrementally: each call gives only the new positions, and
- every tensor the plan caches (`k` and `v` after rotary, in a transformer) is appended
  to the cache right after its hook point (`cache.extend`), so the hook sees the new
  positions and everything after sees all of them;
- positions read at the new positions are the cache's next ones (`cache.positions`):
  rotary angles (`_rotary(..., cache)`), learnt position rows (`_position_rows`), mask
  conditions (`_positions(t, axis, cache)`), and the fused attention's causal / window
  mask (`_cached_attention`, called only with a cache);
- `new_cache(max_length=N)` makes the cache static, for torch.compile: buffers of N
  positions written in place, and the positions held kept as a tensor, so no shape or
  Python value in a decoding step depends on how many positions came before;
- left padding (`new_cache(pad=...)`: padding positions per row) shifts each row's
  positions so its first real token is position 0, and no key at a padding position is
  ever attended to (`_unpadded`).
Classes that hold none of these take no cache argument. A file whose plan is refused
gets a `new_cache` that raises with the located reason.
"""
from __future__ import annotations

from tndsl.lang import ir

CACHE = "cache"  # the forward's argument; no .tn name starts a local with this spelling clash
# (generated locals from .tn names go through codegen.names; `cache` is reserved there)

HELPERS = {
    "KVCache": '''
class KVCache:
    """The tensors tndsl derived from the diagram as read at earlier positions (keys and
    values). Pass it to each forward call with only the new positions; `length` counts
    those held. `pad`: per row, how many first positions are left padding (never
    attended to; a row's positions count from its first real token). `max_length`:
    static, for torch.compile (as Hugging Face's StaticCache): buffers written in place
    (zeros after the last position, masked out), the positions held kept as a tensor,
    so a call's shapes depend only on its own new positions. Else tensors grow."""

    def __init__(self, pad=None, max_length=None):
        if max_length is not None and (type(max_length) is not int or max_length < 1):
            raise ValueError(f"max_length must be a whole number >= 1, not {max_length!r}")
        self.pad = None if pad is None else torch.as_tensor(pad, dtype=torch.long)
        self.max_length = max_length
        self._store = {}       # (id of the module, name) -> the tensor kept
        self._tables = {}      # a static cache's rotary tables
        self._length = 0       # the positions held (a growing cache)
        self._position = None  # the same as a tensor on the model's device (a static one)

    @property
    def length(self):
        if self.max_length is None:
            return self._length
        return 0 if self._position is None else int(self._position)

    def positions(self, n, device):
        """This call's `n` positions, after those held, as a tensor."""
        if self.max_length is None:
            return torch.arange(self._length, self._length + n, device=device)
        if self._position is None or self._position.device != device:
            start = 0 if self._position is None else self._position
            self._position = torch.as_tensor(start, dtype=torch.long, device=device)
        return self._position + torch.arange(n, device=device)

    def check(self, n):
        """First in each call: a static cache has room for `n` more positions."""
        if self.max_length is None:
            return
        if not torch.compiler.is_compiling():
            if self.length + n > self.max_length:
                raise ValueError(f"the cache holds {self.max_length} positions; this call "
                                 f"would make {self.length + n}")
        elif self._position is not None:  # an assert op: no branch on the length
            torch._assert_async(self._position + n <= self.max_length,
                                "this call would make more positions than max_length")

    def extend(self, module, name, value, axis):
        """`value` (the new positions along `axis`) after the ones kept for `name` of
        `module`: the whole sequence so far (a static cache: its whole buffer)."""
        key = (id(module), name)  # not the module: torch.compile would guard through it
        kept = self._store.get(key)
        if self.max_length is None:
            self._store[key] = value if kept is None else torch.cat((kept, value), dim=axis)
            return self._store[key]
        if kept is None:
            shape = list(value.shape)
            shape[axis] = self.max_length
            kept = self._store[key] = value.new_zeros(shape)
        return kept.index_copy_(axis, self.positions(value.size(axis), value.device), value)

    def advance(self, n):
        """Last in each call: `n` positions were appended."""
        if self.max_length is None:
            self._length += n
        else:
            self._position = torch.tensor(n) if self._position is None else self._position + n

    def reorder(self, rows):
        """Keep (and reorder) these batch rows (beam search, dropping finished rows)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        for key, value in self._store.items():
            self._store[key] = value.index_select(0, rows.to(value.device))
        if self.pad is not None:
            self.pad = self.pad.index_select(0, rows.to(self.pad.device))

    def __repr__(self):
        static = "" if self.max_length is None else f", max_length={self.max_length}"
        return (f"KVCache(length={self.length}{static}, tensors={len(self._store)}"
                f"{', padded' if self.pad is not None else ''})")
''',
    "_position_rows": '''
def _position_rows(t, axis, n, cache, every=False):
    """The rows of a position-indexed param `t` (along `axis`, negative) for this call's
    positions (all so far if `every`; a static cache's `max_length`), shifted per row
    past its left padding (then with a leading batch dim)."""
    size = t.size(axis)
    if cache is not None and cache.max_length is not None:
        if cache.max_length > size:
            raise ValueError(f"the cache's max_length {cache.max_length} is past the {size} "
                             "positions the network has")
        positions = torch.arange(cache.max_length, device=t.device) if every \\
            else cache.positions(n, t.device)
    else:
        start = 0 if cache is None else cache.length
        if every:
            n, start = start + n, 0
        if start + n > size:
            raise ValueError(f"position {start + n - 1} is past the {size} positions "
                             "the network has")
        if cache is None or cache.pad is None:
            return t.narrow(axis, start, n)
        positions = torch.arange(start, start + n, device=t.device)
    if cache.pad is None:
        return t.index_select(axis, positions)
    positions = (positions - cache.pad.to(t.device)[:, None]).clamp(min=0)
    k = axis % t.dim()
    return t.movedim(k, 0)[positions].movedim(1, k + 1)
''',
    "_unpadded": '''
def _unpadded(cache, t, key, query):
    """Where the key (axis `key` of `t`, every position so far) is not left padding of
    its row, or is the query itself (so a padding row still attends somewhere):
    broadcastable over `t`, batch first; True without padding."""
    if cache is None or cache.pad is None:
        return True
    s = _positions(t, key)
    p = _positions(t, query, cache)
    pad = cache.pad.to(t.device).view((-1,) + (1,) * (t.dim() - 1))
    return (s >= pad) | (s == p)
''',
    "_cached_attention": '''
def _cached_attention(q, k, v, window, causal, scale, grouped, cache):
    """Scaled dot-product attention of this call's queries over every key so far (a
    static cache: all its keys, those after the last position masked out). A growing
    cache's first unpadded call runs the plain causal kernel, and a single new query
    needs no mask unless a window or padding applies; otherwise the boolean mask is
    built from the cache's positions (grouped key/value heads go in as they are)."""
    n, total = q.size(-2), k.size(-2)
    groups = q.size(-3) // k.size(-3) if grouped else 1
    if (cache.max_length is None and cache.pad is None and (window is None or total <= window)
            and (cache.length == 0 or n == 1)):  # one sequence, or one query
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal and n > 1,
                                              scale=scale, enable_gqa=groups > 1)
    s = torch.arange(total, device=q.device)
    p = cache.positions(n, q.device)[:, None]
    keep = s <= (p if causal else p[-1])  # not causal: every key held so far
    if window is not None:
        keep = keep & (p - s < window)
    if cache.pad is not None:
        pad = cache.pad.to(q.device).view(-1, 1, 1, 1)
        keep = keep & ((s >= pad) | (s == p))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale,
                                          enable_gqa=groups > 1)
''',
}
# The helpers each one calls: added with it (`helpers.update(NEEDS[name])`).
NEEDS = {"_unpadded": ("_unpadded", "_positions")}


def positional(network: ir.Network, plan, order) -> set[str]:
    """Full names of the equations whose code reads the cache: cached ones, and those
    with a mask, rotary map or position-indexed param on the position dim."""
    tensors = {t.name: t for t in network.tensors}
    found = {name for name, _ in plan.cached}
    for eq in order:
        if plan.index_roles.get(eq.name) and _has_mask(eq.rhs):
            found.add(eq.name)
        for ref in ir.refs(eq.rhs):
            tensor = tensors.get(ref.name)
            if tensor is not None and tensor.kind in ("param", "fixed") and \
                    any(leg.dim == plan.dim for leg in tensor.legs):
                found.add(eq.name)
    return found


def _has_mask(node) -> bool:
    if isinstance(node, ir.Mask):
        return True
    if isinstance(node, ir.Sum):
        return any(_has_mask(f) for t in node.terms for f in t.factors)
    if isinstance(node, ir.Box):
        return _has_mask(node.argument)
    return False


def new_cache_method(reason: str | None) -> list[str]:
    """The root's `new_cache` method: a KVCache, or the refusal's reason."""
    from tndsl.lang.text import python_string
    lines = ["def new_cache(self, pad=None, max_length=None):",
             '    """An empty cache for incremental decoding: pass it as `cache=` to each call',
             "    with only the new positions (`KVCache`; `pad`: left-padding positions per",
             "    row; `max_length`: a static cache of that many positions, allocated once,",
             '    for torch.compile)."""']
    if reason is None:
        lines.append("    return KVCache(pad, max_length)")
    else:
        lines.append(f"    raise ValueError({python_string(reason)})")
    return lines
