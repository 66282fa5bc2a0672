"""Code for expert dispatch (`passes.fuse_experts`): each expert runs on the tokens
routed to it, and its output, times the token's gate, is added at those tokens. The
explicit (dense) equations run instead when a hook is attached to one of the values
the dispatch skips, so a cache or a patch sees exactly what the dense model computes.
"""
from __future__ import annotations

from tndsl.codegen.lower import ELEMENTWISE, Lowering, Value
from tndsl.passes.fuse_experts import FusedExperts, Projection
from tndsl.lang.text import python_comment

HELPERS = {
    "_experts": '''
def _experts(x, gates, w_gate, w_in, w_out, act):
    """Σ over experts e of gates[..., e] * mlp_e(x), computed only where gates[..., e] is
    not 0: x (..., model), gates (..., experts); w_in, w_gate (experts, model, hidden),
    w_out (experts, hidden, model); mlp_e(t) = act(t w_gate[e]) * (t w_in[e]) w_out[e]
    (act(t w_in[e]) w_out[e] without w_gate). The routed (token, expert) pairs are
    sorted by expert and gathered once; each expert runs on its tokens as one batch;
    the results, times their gates, are added back with one index_add_."""
    flat = x.reshape(-1, x.size(-1))
    weights = gates.reshape(-1, gates.size(-1)).to(flat.dtype)
    token, expert = (weights != 0).nonzero(as_tuple=True)
    order = expert.argsort(stable=True)
    token, expert = token[order], expert[order]
    chosen = flat[token]
    parts, start = [], 0
    for e, count in enumerate(torch.bincount(expert, minlength=weights.size(-1)).tolist()):
        if count:
            rows = chosen[start:start + count]
            hidden = act(rows @ w_in[e]) if w_gate is None else \\
                act(rows @ w_gate[e]) * (rows @ w_in[e])
            parts.append(hidden @ w_out[e])
            start += count
    out = flat.new_zeros(flat.size(0), w_out.size(-1))
    if parts:
        out.index_add_(0, token, torch.cat(parts) * weights[token, expert, None])
    return out.reshape(x.shape[:-1] + (w_out.size(-1),))
''',
}


def _weight(lower: Lowering, projection: Projection | None) -> str:
    if projection is None:
        return "None"
    var = lower.values[projection.param].var
    return var if projection.order == (0, 1, 2) else f"{var}.permute{projection.order}"


def experts(lower: Lowering, fused: FusedExperts, var: str, hooks: dict) -> None:
    """`hooks`: equation name -> the code of its hook point (or None)."""
    checks = [hooks[e.name] for e in fused.inner if hooks.get(e.name)]
    condition = lower.hooked(*checks) if checks else ""
    if condition:
        lower.emit(f"if {condition}:")
        lower.indent += 1
        for eq in fused.equations:
            eq_var = var if eq is fused.out else lower.ns(f"value:{eq.name}", eq.name)
            lower.equation(eq, eq_var, None if eq is fused.out else hooks.get(eq.name))
        lower.indent -= 1
        lower.emit("else:")
        lower.indent += 1
    lower.helpers.add("_experts")
    if fused.activation == "gelu_bloom":
        lower.helpers.add("_gelu_bloom")
    act = ELEMENTWISE[fused.activation].format("t")
    act = "lambda t: t" if act == "t" else f"lambda t: {act}"
    if act == "lambda t: F.silu(t)":
        act = "F.silu"
    lower.emit(f"# {python_comment(fused.out.name)}: each expert on the tokens routed to it "
               f"by `{python_comment(fused.gates)}` (the others' gates are 0)")
    x, gates = lower.values[fused.source].var, lower.values[fused.gates].var
    lower.emit(f"{var} = _experts({x}, {gates}, {_weight(lower, fused.w_gate)}, "
               f"{_weight(lower, fused.w_in)}, {_weight(lower, fused.w_out)}, {act})")
    if condition:
        lower.indent -= 1
    lower.through_hook(var, hooks.get(fused.out.name))
    batched = lower.values[fused.source].batched or lower.values[fused.gates].batched
    lower.values[fused.out.name] = Value(var, batched)
