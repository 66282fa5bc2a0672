"""The registry of boxes: functions drawn as a dashed box around a sub-network.

Only names and shapes live here; each back end (code generation, the reference
evaluator, figures) keys its own implementation on `Box.name`, so a new box is added
here once and every back end that lacks it fails loudly in its own registry test.
"""
from __future__ import annotations

from dataclasses import dataclass

from tndsl.lang.errors import Span, UnknownNameError, did_you_mean


@dataclass(frozen=True)
class BoxKind:
    name: str
    over_legs: bool      # True: applied along named legs, `softmax[s](...)`
    summary: str
    # Names of the real-valued arguments written after the tensor (`softcap(x, 30)`,
    # `topk[x](g, 2)`); a norm's optional eps is its own rule (`Box.eps`).
    parameters: tuple[str, ...] = ()


_KINDS = [
    BoxKind("relu", False, "max(x, 0)"),
    BoxKind("gelu", False, "x Φ(x), the exact Gaussian error linear unit"),
    BoxKind("gelu_tanh", False, "GPT-2's tanh approximation of gelu"),
    BoxKind("gelu_bloom", False, "BLOOM's gelu: the tanh approximation with sqrt(2/π) "
            "written 0.79788456"),
    BoxKind("tanh", False, "hyperbolic tangent"),
    BoxKind("sigmoid", False, "1 / (1 + exp(-x))"),
    BoxKind("silu", False, "x sigmoid(x)"),
    BoxKind("exp", False, "exponential"),
    BoxKind("identity", False, "x, drawn as a box: marks a sub-network without changing it"),
    BoxKind("step", False, "1 where x > 0, else 0 (Heaviside); JumpReLU is relu(x) step(x - θ)"),
    BoxKind("softcap", False, "c · tanh(x / c): soft-capping at ±c (Gemma 2's attention "
            "and final logits)", ("cap",)),
    BoxKind("softmax", True, "exp(x) / Σ exp(x) along the legs; masked entries get 0"),
    BoxKind("layernorm", True, "(x - mean) / sqrt(var + 1e-5) along the legs, no affine part"),
    BoxKind("rmsnorm", True, "x / sqrt(mean(x²) + 1e-5) along the legs, no affine part"),
    BoxKind("topk", True, "x where it is among the k largest along the legs (the first "
            "in order among equals), 0 elsewhere: a mixture of experts' routing", ("k",)),
    BoxKind("normalize", True, "x / Σ x along the legs: renormalised gates"),
]

BOXES: dict[str, BoxKind] = {kind.name: kind for kind in _KINDS}

# Alternative spellings, resolved at elaboration so the IR only holds canonical names.
ALIASES: dict[str, str] = {"σ": "sigmoid", "gelu_new": "gelu_tanh"}

# Functions of scalars (coefficients), not boxes.
SCALAR_FUNCTIONS = ("sqrt",)


def parameter_rule(kind: BoxKind) -> str:
    """How a box with parameters is written, for messages."""
    legs = "[legs]" if kind.over_legs else ""
    return f"`{kind.name}{legs}(x, {', '.join(kind.parameters)})`"


def lookup(name: str, span: Span | None, *, over_legs: bool) -> BoxKind:
    """The box called `name`, or an error listing the valid ones."""
    kind = BOXES.get(ALIASES.get(name, name))
    if kind is not None and kind.over_legs == over_legs:
        return kind
    valid = sorted(k.name for k in _KINDS if k.over_legs == over_legs)
    if kind is not None:
        usage = (f"`{name}` is applied along legs: write `{name}[leg](...)`" if kind.over_legs
                 else f"`{name}` is element-wise: write `{name}(...)` without legs")
        raise UnknownNameError(usage, span)
    form = "box over legs" if over_legs else "element-wise box"
    hint = did_you_mean(name, valid) or ""
    raise UnknownNameError(f"unknown {form} `{name}`", span,
                           hint=(hint + " " if hint else "") + "valid: " + ", ".join(valid))
