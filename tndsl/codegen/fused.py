"""Code for the fused forms (`passes.fuse_attention`, `passes.fuse_layer_norm`).

Each emits the fast call when no hook is attached to the values it skips, and the
explicit equations otherwise: the choice is made at run time, per instance, so a
cache or a patch of the pattern sees exactly what the unfused model computes.
"""
from __future__ import annotations

from tndsl.codegen.lower import EPS, Lowering, Value
from tndsl.passes.fuse_attention import FusedAttention
from tndsl.passes.fuse_layer_norm import FusedNorm
from tndsl.lang.text import python_comment

HELPERS = {
    "_windowed_attention": '''
def _windowed_attention(q, k, v, window, causal, scale, grouped):
    """Scaled dot-product attention keeping key s for query p where p - s < window (and
    s <= p if causal); queries and keys have one length. A sequence no longer than the
    window needs no mask, so the plain kernel runs; a longer one gets a boolean mask,
    cached per length. `grouped`: fewer key/value heads (dim -3) than query heads; they
    go in as they are on the CPU, whose kernel takes them with a mask; other devices'
    would fall back to the math kernel, so there they are repeated per query head."""
    n = q.size(-2)
    groups = q.size(-3) // k.size(-3) if grouped else 1
    if n <= window:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale,
                                              enable_gqa=groups > 1)
    if groups > 1 and q.device.type != "cpu":
        k, v = k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3)
        groups = 1
    keep = _window_mask(n, window, causal, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale,
                                          enable_gqa=groups > 1)


_WINDOW_MASKS = {}


def _window_mask(n, window, causal, device):
    """Where p - s < window (and s <= p if causal), for positions 0..n-1: built once per
    length and device, outside inference mode (whose tensors a later training step could
    not use)."""
    key = (n, window, causal, str(device))
    if key not in _WINDOW_MASKS:
        if len(_WINDOW_MASKS) > 64:
            _WINDOW_MASKS.clear()
        with torch.inference_mode(False):
            position = torch.arange(n, device=device)
            offset = position[:, None] - position[None, :]
            keep = offset < window
            _WINDOW_MASKS[key] = keep & (offset >= 0) if causal else keep
    return _WINDOW_MASKS[key]
''',
}


def _move(var: str, roles: tuple[str, ...], want: tuple[str, ...]) -> str:
    """`var` (trailing legs in `roles` order) with its trailing legs in `want` order."""
    if roles == want:
        return var
    n = len(roles)
    source = tuple(roles.index(r) - n for r in want)
    target = tuple(range(-n, 0))
    moved = [(s, t) for s, t in zip(source, target) if s != t]
    if len(moved) == 2 and moved[0] == moved[1][::-1]:
        return f"{var}.transpose({moved[0][0]}, {moved[0][1]})"
    return f"{var}.movedim({source}, {target})"


def attention(lower: Lowering, fused: FusedAttention, var: str, hooks: dict) -> None:
    """`hooks`: equation name -> the code of its hook point (or None)."""
    checks = [hooks[n] for n in (fused.scores.name, fused.pattern.name) if hooks.get(n)]
    condition = lower.hooked(*checks) if checks else ""
    if condition:
        lower.emit(f"if {condition}:")
        lower.indent += 1
        for eq in (fused.scores, fused.pattern, fused.out):
            eq_var = var if eq is fused.out else lower.ns(f"value:{eq.name}", eq.name)
            lower.equation(eq, eq_var, None if eq is fused.out else hooks.get(eq.name))
        lower.indent -= 1
        lower.emit("else:")
        lower.indent += 1
    lower.index_dims = {leg.name: leg.dim for leg in fused.scores.index_dims}
    heads = fused.heads
    q = _move(lower.values[fused.query].var, fused.query_roles, heads + ("p", "e"))
    keys = lambda name: lower.all_values.get(name, lower.values[name]).var  # noqa: E731
    k = _move(keys(fused.key), fused.key_roles, heads + ("s", "e"))
    v = _move(keys(fused.value), fused.value_roles, heads + ("s", "f"))
    scale = lower._scalar_code(fused.scale)
    mask = "causal" if fused.causal else "unmasked"
    if fused.window is not None:
        mask += f", keys less than {fused.window} back"
    grouped = _grouped(lower, fused)
    lower.emit(f"# {python_comment(fused.out.name)}: scaled dot-product attention ({mask}"
               f"{'; grouped key/value heads' if grouped else ''}), pattern not materialised")
    if fused.window is None:
        call = (f"F.scaled_dot_product_attention({q}, {k}, {v}, is_causal={fused.causal}, "
                f"scale={scale}{', enable_gqa=True' if grouped else ''})")
    else:
        lower.helpers.add("_windowed_attention")
        call = (f"_windowed_attention({q}, {k}, {v}, window={fused.window}, "
                f"causal={fused.causal}, scale={scale}, grouped={grouped})")
    out_roles = heads + ("p", "f")
    if lower.cache is None:
        lower.emit(f"{var} = {_move(call, out_roles, fused.out_roles)}")
    else:  # decoding: with a cache the keys may start before the queries
        lower.helpers.add("_cached_attention")
        cached = (f"_cached_attention({q}, {k}, {v}, window={fused.window}, "
                  f"causal={fused.causal}, scale={scale}, grouped={grouped}, "
                  f"cache={lower.cache})")
        for line, code in ((f"if {lower.cache} is None:", call), ("else:", cached)):
            lower.emit(line)
            lower.indent += 1
            lower.emit(f"{var} = {_move(code, out_roles, fused.out_roles)}")
            lower.indent -= 1
    if condition:
        lower.indent -= 1
    lower.through_hook(var, hooks.get(fused.out.name))
    batched = any(lower.values[n].batched for n in fused.reads)
    lower.values[fused.out.name] = Value(var, batched)


def _grouped(lower: Lowering, fused: FusedAttention) -> bool:
    """Whether the key and value really have fewer heads than the query: a grouping of
    one query head per key/value head is the identity and needs nothing."""
    if fused.grouping is None:
        return False
    legs = lower.values[fused.grouping].fixed.legs
    heads, groups = (lower.sizes.get(leg.dim) for leg in legs)
    return heads is None or groups is None or heads != groups


def norm(lower: Lowering, fused: FusedNorm, var: str, hooks: dict) -> None:
    hook = hooks.get(fused.normalized.name) if fused.normalized is not None else None
    if hook:
        lower.emit(f"if {lower.hooked(hook)}:")
        lower.indent += 1
        lower.equation(fused.normalized, lower.ns(f"value:{fused.normalized.name}",
                                                 fused.normalized.name), hook)
        lower.equation(fused.out, var, None)
        lower.indent -= 1
        lower.emit("else:")
        lower.indent += 1
    lower.index_dims = {leg.name: leg.dim for leg in fused.out.index_dims}
    legs = fused.out.indices[len(fused.out.indices) - fused.legs:]
    shape = "".join(f"{lower._size_code(lower._dim_of(i))}, " for i in legs).rstrip(" ")
    x = lower.values[fused.argument].var
    w = lower.values[fused.weight].var
    b = lower.values[fused.bias].var if fused.bias else None
    if fused.plus_one:
        w = f"(1 + {w})"
    lower.emit(f"# {python_comment(fused.out.name)}: {fused.function} with its weight"
               f"{' (1 + w)' if fused.plus_one else ''}{' and bias' if b else ''} in one call")
    eps = EPS if fused.eps is None else fused.eps
    if fused.function == "layernorm":
        code = f"F.layer_norm({x}, ({shape}), {w}, {b}, eps={eps!r})"
    else:
        code = f"F.rms_norm({x}, ({shape}), {w}, eps={eps!r})" + (f" + {b}" if b else "")
    lower.emit(f"{var} = {code}")
    if hook:
        lower.indent -= 1
    lower.through_hook(var, hooks.get(fused.out.name))
    lower.values[fused.out.name] = Value(var, lower.values[fused.argument].batched)
