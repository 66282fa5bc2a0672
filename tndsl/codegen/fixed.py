"""Fixed tensors in generated code: applied in their cheap forms, never materialised.

A product term that holds a fixed tensor (`tndsl.lang.fixed`) is rewritten before it is
contracted: the fixed tensor and the one operand it is contracted with become a single
operand computed directly —
- a rotary map `R[p, e, f] * x[.., p, .., f, ..]` is `x` rotated in its cos/sin form
  along `f` at the positions along `p` (`_rotary`), with `f` renamed `e`; contracted on
  `e` instead, it is the inverse rotation. No Context × Head × Head tensor exists;
- a grouping `G[h, g] * k[.., g, ..]` is `k.repeat_interleave(heads per group)` along
  `g`, renamed `h` (grouped-query attention); contracted on `h`, a sum over each group;
  with one head per group it is the identity, and only the leg is renamed.
Anything else with a fixed tensor is a located error that says how to write it.
"""
from __future__ import annotations

from tndsl.lang import fixed, ir
from tndsl.lang.errors import SizeError, TnError

HELPERS = {
    "_rotary": '''
def _rotary(x, position, axis, rotated, base, inverse=False, interleaved=False, cache=None):
    """x turned by the rotary map along `axis`, at the positions along `position` (both
    negative axes): the pairs (i, i + rotated/2) of the first `rotated` entries turn by
    the angle p * base**(-2i/rotated) (`interleaved`: the pairs (2i, 2i + 1), GPT-J's);
    the rest pass through. `inverse`: the transpose.
    As `x * cos + rotate_half(x) * (-sin, sin)`: four kernels, with the same roundings
    as `x1 cos - x2 sin, x2 cos + x1 sin`. With a decoding cache the positions follow
    the ones it holds, each row's counted from its first token after left padding."""
    x = x.movedim((position, axis), (-2, -1))
    if cache is None:
        cos, sin = _rotary_table(x.size(-2), rotated, base, inverse, x.dtype, x.device,
                                 interleaved)
    else:
        cos, sin = _rotary_at(x, cache, rotated, base, inverse, interleaved)
    half = rotated // 2
    turned = x[..., :rotated] if rotated < x.size(-1) else x
    if interleaved:  # each pair swapped: (x1, x0, x3, x2, ...)
        partner = turned.unflatten(-1, (half, 2)).flip(-1).flatten(-2)
    else:
        partner = torch.cat((turned[..., half:], turned[..., :half]), dim=-1)
    out = turned * cos + partner * sin
    if rotated < x.size(-1):
        out = torch.cat((out, x[..., rotated:]), dim=-1)
    return out.movedim((-2, -1), (position, axis))


def _rotary_at(x, cache, rotated, base, inverse, interleaved=False):
    """cos and signed sin at this call's positions (x: [..., n, rotated-or-more]): from a
    table for a power of two positions, so decoding steps reuse it; a static cache's
    is for its `max_length`, kept with it and read at its positions tensor."""
    n = x.size(-2)
    if cache.max_length is None:
        start = cache.length
        size = 1 << max(start + n - 1, 1).bit_length()
        cos, sin = _rotary_table(size, rotated, base, inverse, x.dtype, x.device, interleaved)
        if cache.pad is None:
            return cos[start:start + n], sin[start:start + n]
        positions = torch.arange(start, start + n, device=x.device)
    else:
        key = (rotated, base, inverse, interleaved, x.dtype, x.device)
        if key not in cache._tables:  # made in the first call (its graph, compiled)
            cache._tables[key] = _rotary_angles(cache.max_length, rotated, base, inverse,
                                                x.dtype, x.device, interleaved)
        (cos, sin), positions = cache._tables[key], cache.positions(n, x.device)
        if cache.pad is None:
            return cos[positions], sin[positions]
    positions = (positions - cache.pad.to(x.device)[:, None]).clamp(min=0)
    shape = (positions.size(0),) + (1,) * (x.dim() - 3) + (n, cos.size(-1))
    return cos[positions].view(shape), sin[positions].view(shape)


_ROTARY_TABLES = {}


def _rotary_table(n, rotated, base, inverse, dtype, device, interleaved=False):
    """cos and signed sin (-sin, sin; the inverse: sin, -sin) of the rotary angles for
    positions 0..n-1, each `rotated` wide, computed once in float64 on the CPU (so every
    device and dtype gets correctly rounded values) and cached: made outside inference
    mode, whose tensors could not be used by a later training step."""
    key = (n, rotated, base, inverse, dtype, str(device), interleaved)
    if key not in _ROTARY_TABLES:
        if len(_ROTARY_TABLES) > 64:
            _ROTARY_TABLES.clear()
        with torch.inference_mode(False):
            _ROTARY_TABLES[key] = _rotary_angles(n, rotated, base, inverse, dtype, device,
                                                 interleaved)
    return _ROTARY_TABLES[key]


def _rotary_angles(n, rotated, base, inverse, dtype, device, interleaved=False):
    frequencies = base ** (-torch.arange(0, rotated, 2, dtype=torch.float64) / rotated)
    angles = torch.arange(n, dtype=torch.float64)[:, None] * frequencies
    cos, sin = angles.cos(), angles.sin()
    if inverse:
        sin = -sin
    if interleaved:  # (c0, c0, c1, c1, ...) and (-s0, s0, -s1, s1, ...)
        cos = torch.stack((cos, cos), dim=-1).flatten(-2)
        sin = torch.stack((-sin, sin), dim=-1).flatten(-2)
        return cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)
    return (torch.cat((cos, cos), dim=-1).to(device=device, dtype=dtype),
            torch.cat((-sin, sin), dim=-1).to(device=device, dtype=dtype))
''',
    "_alibi": '''
def _alibi(heads, queries, keys, like):
    """ALiBi's bias slope[h] * (key - query), (heads, queries, keys), in like's dtype and
    on its device: for heads a power of two p, slope[h] = 2**(-8 (h + 1) / p); else p's
    slopes and then 2**(-4 (2k - 1) / p) for the rest (BLOOM's build_alibi_tensor)."""
    power = 2 ** (heads.bit_length() - 1)
    exponents = torch.cat((torch.arange(1, power + 1, dtype=torch.float64) * 8,
                           torch.arange(1, 2 * (heads - power) + 1, 2, dtype=torch.float64) * 4))
    slopes = 2.0 ** (-exponents / power)
    distance = (torch.arange(keys, dtype=torch.float64)[None, :]
                - torch.arange(queries, dtype=torch.float64)[:, None])
    return (slopes[:, None, None] * distance).to(device=like.device, dtype=like.dtype)
''',
}


def lower(generator, ref: ir.Ref, tensor: ir.Tensor, operands: list, layout, hint: str
          ) -> list:
    """The term's operands with `ref` (a fixed tensor) applied to the operand it meets."""
    function = tensor.fixed.function
    # Position legs (a rotary map's, ALiBi's two) may be read at run time; every other
    # size is built in.
    needed = {"rotary": tensor.legs[1:], "alibi": tensor.legs[:1]}.get(function, tensor.legs)
    unsized = [leg.dim for leg in needed if generator.sizes.get(leg.dim) is None]
    if unsized:  # the cheap forms are built from these sizes at compile time
        raise SizeError(f"the compiled form of `{ref.name}` needs the size of "
                        f"`{unsized[0]}`", tensor.span or ref.span,
                        hint=f"give it one when loading: dims={{'{unsized[0]}': ...}}")
    if function == "rotary":
        position, out, into = ref.indices
        for contracted, result, inverse in ((into, out, False), (out, into, True)):
            x = fixed.partner(operands, contracted, result, layout, must_have=position)
            if x is not None:
                generator.helpers.add("_rotary")
                n = len(x.indices)
                var = generator._temp(hint, x.var)
                code = (f"_rotary({var}, position={x.indices.index(position) - n}, "
                        f"axis={x.indices.index(contracted) - n}, "
                        f"rotated={fixed.rotated(tensor, generator.sizes)}, "
                        f"base={tensor.fixed.args[0]!r}"
                        + (", inverse=True" if inverse else "")
                        + (", interleaved=True" if fixed.interleaved(tensor) else "")
                        + f"{generator.at_new_positions(position, keyword=True)})")
                return _replace(operands, x, code, contracted, result)
        raise TnError(
            f"the compiler applies the rotary map `{ref.name}` to one factor that has the "
            f"position leg `{position}` and is the only one to share `{into}` (or `{out}`) "
            "with it", ref.span,
            hint=f"name that product in its own equation, e.g. `q[p, h, {out}] = "
                 f"{ref.name}[p, {out}, {into}] * q_pre[p, h, {into}]`")
    if function == "alibi":  # a bias added to the scores: built (heads × P × S) per call
        generator.helpers.add("_alibi")
        like = generator.float_value(operands)
        if like is None:
            raise TnError(f"`{ref.name}` needs a tensor beside it to take its dtype from",
                          ref.span)
        heads, queries, keys = (generator._size_code(leg.dim) for leg in tensor.legs)
        var = generator._temp(hint, f"_alibi({heads}, {queries}, {keys}, {like})")
        return operands + [generator._operand(var, list(ref.indices), False)]
    if function == "grouping":
        head, group = ref.indices
        size = fixed.group_size(tensor, generator.sizes)
        groups = generator.sizes[tensor.legs[1].dim]
        x = fixed.partner(operands, group, head, layout)
        if x is not None:
            axis = x.indices.index(group) - len(x.indices)
            code = x.var if size == 1 else \
                f"{generator._temp(hint, x.var)}.repeat_interleave({size}, dim={axis})"
            return _replace(operands, x, code, group, head)
        x = fixed.partner(operands, head, group, layout)
        if x is not None:
            axis = x.indices.index(head) - len(x.indices)
            code = x.var if size == 1 else \
                (f"{generator._temp(hint, x.var)}.unflatten({axis}, ({groups}, {size}))"
                 f".sum({axis})")
            return _replace(operands, x, code, head, group)
        raise TnError(
            f"the compiler applies the grouping `{ref.name}` to one factor that is the only "
            f"one to share `{group}` (or `{head}`) with it", ref.span,
            hint=f"e.g. `scores[h, p, s] = q[p, h, e] * {ref.name}[h, g] * k[s, g, e]`")
    raise TnError(f"the compiler has no form for fixed tensor `{function}`", ref.span)


def _replace(operands, x, code: str, old: str, new: str) -> list:
    indices = [new if i == old else i for i in x.indices]
    rewritten = type(x)(code, indices, x.batched, x.size)
    return [rewritten if op is x else op for op in operands]
