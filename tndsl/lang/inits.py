"""The registry of param initialisers (`param W[...] init normal(0.02)`).

The default, when a param names none, is `normal(0.02)`, GPT-2's; code generation
keys its implementation on the name.
"""
from __future__ import annotations

from tndsl.lang.errors import Span, UnknownNameError, did_you_mean, TnError

# name -> (fewest args, most args, what the args mean)
INITIALIZERS: dict[str, tuple[int, int, str]] = {
    "normal": (0, 2, "normal(std=0.02) or normal(mean, std)"),
    "uniform": (2, 2, "uniform(low, high)"),
    "constant": (1, 1, "constant(value)"),
    "zeros": (0, 0, "zeros"),
    "ones": (0, 0, "ones"),
}

DEFAULT = ("normal", (0.02,))


def validate(name: str, args: tuple[float, ...], span: Span | None) -> None:
    if name not in INITIALIZERS:
        hint = did_you_mean(name, INITIALIZERS) or ""
        raise UnknownNameError(f"unknown initialiser `{name}`", span,
                               hint=(hint + " " if hint else "") + "valid: "
                               + ", ".join(sorted(INITIALIZERS)))
    low, high, usage = INITIALIZERS[name]
    if not low <= len(args) <= high:
        raise TnError(f"`{name}` takes {low if low == high else f'{low} to {high}'} "
                      f"argument{'s' if high != 1 else ''}, got {len(args)}", span,
                      hint=f"write {usage}")
