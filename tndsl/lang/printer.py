"""A canonical text dump of the IR, for golden tests and for writing expressions back
as `.tn` (residuals of failed proofs). Deterministic: declaration order, no addresses."""
from __future__ import annotations

import sympy
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter

from tndsl.lang import ir


def dump(network: ir.Network, sizes: dict[str, int | None] | None = None) -> str:
    sizes = sizes or {}
    lines = []
    for dim in network.dims:
        text = f"dim {dim.name}"
        if dim.size is not None:
            text += f" = {format_scalar(dim.size)}"
        value = sizes.get(dim.name)
        if value is not None and (dim.size is None or dim.size.free_symbols):
            text += f"  # {value}"
        lines.append(text)
    for tensor in network.tensors:
        lines.append(tensor_decl(tensor))
    for inst in network.instances:
        args = ", ".join(b.input for b in inst.bindings)
        lines.append(f"instance {inst.path} = {inst.block}({args}) -> {inst.output}"
                     f"{legs_decl(inst.out_legs)}")
    for eq in network.equations:
        lines.append(equation_line(eq))
    for check in network.checks:
        legs = legs_decl(check.legs) if check.legs is not None else ""
        lines.append(f"check {check.label}{legs}: {expression(check.lhs)} == "
                     f"{expression(check.rhs)}")
    return "\n".join(lines) + "\n"


def equation_line(eq: ir.Equation) -> str:
    head = eq.name + (legs_decl(eq.legs) if eq.legs is not None
                      else "[" + ", ".join(eq.indices) + "]")
    return f"{head} = {expression(eq.rhs)}"


def legs_decl(legs: tuple[ir.Leg, ...]) -> str:
    return "[" + ", ".join(f"{leg.name}: {leg.dim}" for leg in legs) + "]"


def tensor_decl(tensor: ir.Tensor) -> str:
    legs = ", ".join(f"{leg.name}: {'onehot ' if leg.name == tensor.onehot else ''}{leg.dim}"
                     for leg in tensor.legs)
    text = f"{tensor.kind} {tensor.name}[{legs}]"
    if tensor.init is not None:
        args = ", ".join(repr(a) for a in tensor.init.args)
        text += f" init {tensor.init.name}" + (f"({args})" if args else "")
    if tensor.fixed is not None:
        args = ", ".join([f"{a:g}" for a in tensor.fixed.args] + list(tensor.fixed.options))
        text += f" = {tensor.fixed.function}" + (f"({args})" if args else "")
    return text


EXACT_COUNT_DIGITS = 24  # beyond this an integer is written as ≈1.23e+29


def format_count(value: sympy.Expr | int) -> str:
    """`1,234,567` for an integer (`≈1.23e+4321` past EXACT_COUNT_DIGITS digits: exact
    text would be unreadable, and past 4,300 digits Python refuses to make it), the
    expression otherwise."""
    if isinstance(value, int) or value.is_Integer:
        n = int(value)
        return f"{n:,}" if abs(n) < 10 ** EXACT_COUNT_DIGITS else _scientific(n)
    return str(value)


def _scientific(n: int) -> str:
    """Three significant digits (truncated) of any integer, without int-to-text."""
    sign, n = ("-" if n < 0 else ""), abs(n)
    exponent = int((n.bit_length() - 1) * 0.30102999566398120)  # log10(2)
    while 10 ** (exponent + 1) <= n:
        exponent += 1
    while 10 ** exponent > n:
        exponent -= 1
    lead = n // 10 ** (exponent - 2)
    return f"≈{sign}{lead // 100}.{lead % 100:02d}e+{exponent}"


class _ScalarPrinter(StrPrinter):
    """sympy's text, with powers written as the language can read them (it has no
    `**`): `C**2` → `(C*C)`, `A**(3/2)` → `(A*sqrt(A))`; negative powers come out as
    divisions by these."""

    def _print_Pow(self, expr, rational=False):
        base, exponent = expr.base, expr.exp
        if exponent.is_Rational and exponent > 1 and exponent.q in (1, 2):
            written = self.parenthesize(base, PRECEDENCE["Mul"], strict=False)
            parts = [written] * int(exponent.p // exponent.q)
            if exponent.q == 2:
                parts.append(f"sqrt({self._print(base)})")
            return "(" + "*".join(parts) + ")"
        if exponent.is_Rational and exponent < -1 and exponent.q in (1, 2):
            return "(1/" + self._print_Pow(sympy.Pow(base, -exponent, evaluate=False)) + ")"
        return super()._print_Pow(expr, rational)


_SCALARS = _ScalarPrinter({"order": "lex"})


def format_scalar(value: sympy.Expr) -> str:
    return _SCALARS.doprint(value)


def expression(node: ir.Sum) -> str:
    """`.tn` text for an expression (parenthesised where precedence needs it)."""
    parts = []
    for i, term in enumerate(node.terms):
        text = _term(term)
        if i == 0:
            parts.append(text)
        elif text.startswith("-"):
            parts.append("- " + text[1:])
        else:
            parts.append("+ " + text)
    return " ".join(parts) if parts else "0"


def _term(term: ir.Term) -> str:
    factors = [_factor(f) for f in term.factors]
    c = term.coefficient
    if not factors:
        return format_scalar(c)
    if c == 1:
        return " * ".join(factors)
    if c == -1:
        return "-" + " * ".join(factors)
    sign = ""
    if c.could_extract_minus_sign():
        sign, c = "-", -c
    coeff = format_scalar(c)
    if isinstance(c, (sympy.Add, sympy.Mul)) or "/" in coeff:
        coeff = f"({coeff})"
    return sign + coeff + " * " + " * ".join(factors)


def format_box_argument(value: float) -> str:
    """A box's parameter as source: `2` for a whole number, else `repr`."""
    return str(int(value)) if value == int(value) and abs(value) < 2 ** 53 else repr(value)


def _factor(factor: ir.Factor) -> str:
    if isinstance(factor, ir.Ref):
        return f"{factor.name}[{', '.join(factor.indices)}]"
    if isinstance(factor, ir.Box):
        legs = f"[{', '.join(factor.legs)}]" if factor.legs else ""
        inner = factor.argument.terms
        if len(inner) == 1 and inner[0].coefficient == 1 and len(inner[0].factors) == 1 \
                and isinstance(inner[0].factors[0], ir.Mask) and not factor.args:
            return f"{factor.function}{legs}{_factor(inner[0].factors[0])}"
        eps = f", {factor.eps!r}" if factor.eps is not None else ""
        eps += "".join(f", {format_box_argument(a)}" for a in factor.args)
        return f"{factor.function}{legs}({expression(factor.argument)}{eps})"
    if isinstance(factor, ir.Mask):
        conds = " and ".join(c.text() for c in factor.conditions)
        return f"({expression(factor.argument)} where {conds})"
    return f"({expression(factor)})"
