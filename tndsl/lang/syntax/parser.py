"""Lark parse tree → surface AST, and Lark's exceptions → located `TnSyntaxError`s."""
from __future__ import annotations

import sys
from fractions import Fraction
from functools import lru_cache
from pathlib import Path as FsPath

import lark
from lark import Token, v_args
from lark.visitors import Transformer_NonRecursive
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from tndsl.lang.errors import ErrorSink, Source, Span, TnSyntaxError
from tndsl.lang.syntax import ast

# The limits keep a hostile file from turning into a RecursionError or a hang.
MAX_SOURCE_CHARS = 2_000_000
MAX_NESTING = 64
# Number literals are exact (sympy Rationals) until code generation writes them as
# float64, so each is parsed with bounded cost and must survive that: `1e99999999`
# would take minutes to expand, 5,000 digits exceed Python's int-to-text limit, and
# `1e400` would silently become inf (`1e-400`, 0) in the compiled model while the
# verifier, working exactly, saw a finite nonzero number.
MAX_LITERAL_DIGITS = 100      # digits before the exponent
MAX_LITERAL_EXPONENT = 400    # |exponent| as written
_FLOAT64_MAX = Fraction(sys.float_info.max)


def grammar_path() -> FsPath:
    """Where `tn.lark` is: inside the package in a wheel, beside it in a checkout."""
    here = FsPath(__file__).resolve().parents[2]
    for candidate in (here / "grammar" / "tn.lark", here.parent / "grammar" / "tn.lark"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"tn.lark not found next to {here}; the installation is broken")


@lru_cache(maxsize=None)
def lark_parser(strict: bool = False) -> lark.Lark:
    return lark.Lark(grammar_path().read_text(encoding="utf-8"), parser="lalr",
                     propagate_positions=True, maybe_placeholders=True, strict=strict,
                     cache=not strict)


def parse_module(text: str, name: str = "<string>") -> ast.Module:
    """Parse `.tn` text into a surface AST or raise `TnSyntaxError`."""
    source = Source(name, text)
    if len(text) > MAX_SOURCE_CHARS:
        raise TnSyntaxError(f"file is {len(text):,} characters; the limit is {MAX_SOURCE_CHARS:,}",
                            Span(source, 0, 1))
    _check_nesting(source)
    try:
        tree = lark_parser().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, source) from None
    _check_literals(tree, source)
    return ast.Module(tuple(_ToAst(source).transform(tree).children), source)


def _check_nesting(source: Source) -> None:
    # LALR parsing itself is iterative, but the tree transform and every later pass
    # recurse over expressions, so refuse absurd depth before it can overflow the stack.
    depth = 0
    for i, ch in enumerate(source.text):
        if ch in "([{":
            depth += 1
            if depth > MAX_NESTING:
                raise TnSyntaxError(f"brackets nested deeper than {MAX_NESTING} levels",
                                    Span(source, i, i + 1),
                                    hint="name an intermediate result with an equation")
        elif ch in ")]}":
            depth -= 1


def _check_literals(tree: lark.Tree, source: Source) -> None:
    """Every number literal within the bounds above; all offenders reported at once."""
    errors = ErrorSink()
    # iter_subtrees is iterative (scan_values recurses: a long product overflows it).
    numbers = [child for subtree in tree.iter_subtrees() for child in subtree.children
               if isinstance(child, Token) and child.type in ("INT", "FLOAT")]
    for token in numbers:
        problem = literal_problem(str(token))
        if problem is not None:
            message, hint = problem
            errors.add(TnSyntaxError(message, Span(source, token.start_pos, token.end_pos),
                                     hint=hint))
    errors.raise_if_any()


def literal_problem(text: str) -> tuple[str, str] | None:
    """(message, hint) if the literal `text` (INT or FLOAT syntax) is out of bounds, else
    None. Never builds a number larger than 10**(MAX_LITERAL_DIGITS + MAX_LITERAL_EXPONENT)."""
    shown = text if len(text) <= 24 else f"{text[:12]}…{text[-8:]}"
    mantissa, _, exponent = text.lower().partition("e")
    digits = len(mantissa) - ("." in mantissa)
    if digits > MAX_LITERAL_DIGITS:
        return (f"number literal `{shown}` has {digits:,} digits; the limit is "
                f"{MAX_LITERAL_DIGITS}", "write it with an exponent: 1.5e20")
    exponent_digits = exponent.lstrip("+-").lstrip("0")
    if len(exponent_digits) > len(str(MAX_LITERAL_EXPONENT)) or \
            (exponent and abs(int(exponent)) > MAX_LITERAL_EXPONENT):
        return (f"number literal `{shown}` has an exponent beyond ±{MAX_LITERAL_EXPONENT}",
                "float64, in which compiled models compute, spans about 1e-308 to 1e308")
    value = Fraction(mantissa) * Fraction(10) ** int(exponent or 0)
    if value > _FLOAT64_MAX:
        return (f"number literal `{shown}` is not finite in float64 (it would be inf)",
                f"the largest float64 is {sys.float_info.max:.6g}")
    if value != 0 and float(value) == 0:
        return (f"number literal `{shown}` rounds to 0 in float64",
                "the smallest positive float64 is about 4.9e-324; write 0 if 0 is meant")
    return None


_TOKEN_WORDS = {
    "NAME": "a name", "INT": "a number", "FLOAT": "a number", "COMPARE": "a comparison", "EQUALS": "`==`",
    "MINUS": "`-`", "ONEHOT": "`onehot`", "$END": "end of file",
}


def _describe(terminal: str) -> str:
    if terminal in _TOKEN_WORDS:
        return _TOKEN_WORDS[terminal]
    try:
        pattern = lark_parser().get_terminal(terminal).pattern
    except KeyError:
        return terminal
    return f"`{pattern.value}`" if pattern.type == "str" else terminal.lower()


def _syntax_error(e: UnexpectedInput, source: Source) -> TnSyntaxError:
    if isinstance(e, UnexpectedToken) and e.token.type == "$END":
        e = UnexpectedEOF(e.expected)  # report it as the end of file, below
    if isinstance(e, UnexpectedEOF):
        end = len(source.text.rstrip())
        span = Span(source, max(0, end - 1), max(1, end))
        expected = sorted({_describe(t) for t in e.expected})
        return TnSyntaxError("unexpected end of file", span,
                             hint=_expected_hint(expected))
    if isinstance(e, UnexpectedCharacters):
        span = Span(source, e.pos_in_stream, e.pos_in_stream + 1)
        char = source.text[e.pos_in_stream]
        return TnSyntaxError(f"unexpected character {char!r}", span,
                             hint=_expected_hint(sorted({_describe(t) for t in e.allowed})))
    assert isinstance(e, UnexpectedToken)
    token = e.token
    span = Span(source, token.start_pos, token.end_pos)
    expected = sorted({_describe(t) for t in e.accepts or e.expected})
    return TnSyntaxError(f"unexpected {_describe_token(token)}", span, hint=_expected_hint(expected))


def _describe_token(token: Token) -> str:
    if token.type == "NAME":
        return f"name `{token}`"
    if token.type in ("INT", "FLOAT"):
        return f"number `{token}`"
    return f"`{token}`"


def _expected_hint(expected: list[str]) -> str | None:
    if not expected:
        return None
    if len(expected) > 8:
        expected = expected[:8] + ["..."]
    return "expected " + ", ".join(expected)


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    """Bottom-up conversion; each method receives children already converted. Not
    recursive, so a sum of ten thousand terms parses like any other."""

    def __init__(self, source: Source):
        super().__init__(visit_tokens=False)
        self.source = source

    def _span(self, meta) -> Span:
        return Span(self.source, meta.start_pos, meta.end_pos)

    def _tok(self, token: Token) -> ast.Ident:
        return ast.Ident(str(token), Span(self.source, token.start_pos, token.end_pos))

    # ---- paths and names -------------------------------------------------------------
    def path(self, meta, children):
        segments = []
        for child in children:
            if isinstance(child, ast.LoopVar):
                segments.append(child)
            elif child.type == "INT":
                segments.append(int(child))
            else:
                segments.append(str(child))
        return ast.Path(tuple(segments), self._span(meta))

    def loop_var(self, meta, children):
        return ast.LoopVar(str(children[0]), self._span(meta))

    def indices(self, meta, children):
        return tuple(self._tok(t) for t in children)

    # ---- declarations ----------------------------------------------------------------
    def dim_decl(self, meta, children):
        name, size = children
        return ast.DimDecl(self._tok(name), size, self._span(meta))

    def leg_decls(self, meta, children):
        return tuple(children)

    def leg_decl(self, meta, children):
        name, onehot, dim = children
        return ast.LegDecl(self._tok(name), self._tok(dim), onehot is not None, self._span(meta))

    def const_decl(self, meta, children):
        name, value = children
        return ast.ConstDecl(self._tok(name), value, self._span(meta))

    def fixed_decl(self, meta, children):
        path, legs, function, args = children
        return ast.FixedDecl(path, legs or (), self._tok(function), args or (),
                             self._span(meta))

    def param_decl(self, meta, children):
        path, legs, init = children
        return ast.TensorDecl("param", path, legs or (), init, self._span(meta))

    def input_decl(self, meta, children):
        path, legs = children
        return ast.TensorDecl("input", path, legs or (), None, self._span(meta))

    def init(self, meta, children):
        name, args = children
        return ast.Init(self._tok(name), args or (), self._span(meta))

    def init_args(self, meta, children):
        return tuple(children)

    def signed_number(self, meta, children):
        sign, number = children
        return ("-" if sign is not None else "") + str(number)

    def equation(self, meta, children):
        path, indices, rhs = children
        return ast.Equation(path, indices or (), rhs, self._span(meta))

    # ---- blocks, loops, checks -------------------------------------------------------
    def block_def(self, meta, children):
        name, params, out_legs, *body = children
        return ast.BlockDef(self._tok(name), params or (), out_legs or (), tuple(body),
                            self._span(meta))

    def block_params(self, meta, children):
        return tuple(children)

    def block_param(self, meta, children):
        name, legs = children
        return ast.BlockParam(self._tok(name), legs or (), self._span(meta))

    def return_stmt(self, meta, children):
        return ast.Return(children[0], self._span(meta))

    def for_loop(self, meta, children):
        var, start, stop, *body = children
        return ast.ForLoop(self._tok(var), start, stop, tuple(body), self._span(meta))

    def if_stmt(self, meta, children):
        conditions, body, orelse = children
        return ast.IfStmt(conditions, body, orelse or (), self._span(meta))

    def if_body(self, meta, children):
        return tuple(children)

    def else_branch(self, meta, children):
        return children[0]

    def bound(self, meta, children):
        token = children[0]
        if token.type == "INT":
            return ast.Number(str(token), self._span(meta))
        return self._tok(token)

    def check_stmt(self, meta, children):
        label, legs, lhs, rhs = children
        return ast.Check(label, legs, lhs, rhs, self._span(meta))

    def check_label(self, meta, children):
        return self._tok(children[0])

    def check_legs(self, meta, children):
        return children[0] or ()

    # ---- expressions -----------------------------------------------------------------
    def number(self, meta, children):
        return ast.Number(str(children[0]), self._span(meta))

    def bare_name(self, meta, children):
        return ast.BareName(children[0], self._span(meta))

    def tensor(self, meta, children):
        path, indices = children
        return ast.TensorRef(path, indices or (), self._span(meta))

    def leg_box(self, meta, children):
        function, legs, args = children
        return ast.LegBox(function, legs or (), args[0], self._span(meta), tuple(args[1:]))

    def call(self, meta, children):
        function, args, rename, instance = children
        return ast.Call(function, args or (), rename, instance, self._span(meta))

    def args(self, meta, children):
        return tuple(children)

    def rename(self, meta, children):
        return children[0] or ()

    def instance(self, meta, children):
        return children[0]

    def _binary(op):
        def method(self, meta, children):
            left, *_, right = children  # `sub` keeps its MINUS token in the middle
            return ast.Binary(op, left, right, self._span(meta))
        return method

    add, sub, mul, div, mod = (_binary("+"), _binary("-"), _binary("*"), _binary("/"),
                               _binary("%"))

    def neg(self, meta, children):
        return ast.Negate(children[-1], self._span(meta))

    def where(self, meta, children):
        argument, conditions = children
        return ast.Where(argument, conditions, self._span(meta))

    def conditions(self, meta, children):
        return tuple(children)

    def comparison(self, meta, children):
        left, op, right = children
        return ast.Comparison(left, str(op), right, self._span(meta))
