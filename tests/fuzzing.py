"""Generators, checks, coverage and mutants shared by the fuzz tests and
bench/fuzz_long.py (docs/robustness.md).

- `valid_programs` builds random programs that are valid by construction and use every
  construct of the language (so they must pass the differential checks
  `compiled_mismatches` and `expansion_failures`);
- `grammar_sentences` derives random text from the grammar's own rules (every
  production reachable; most sentences mean nothing, and must be refused cleanly);
- `mutations` damages real examples (so anything may happen, except a crash).
- `run_pipeline` runs check, compile (source), DOT and verify, and lets only `TnError`
  escape; a hang is turned into an error by `bounded`.
- `Coverage` counts the grammar productions (by wrapping the LALR parser's reductions)
  and IR node kinds generated; `mutant` breaks one lowering of code generation for a
  while, to show the differential checks catch it.
"""
from __future__ import annotations

import dataclasses
import math
import re
import signal
from collections import Counter
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import lark
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

import tndsl
from tndsl.lang import boxes, inits, ir
from tndsl.render.dot import to_dot
from tndsl.lang.syntax.parser import grammar_path, lark_parser
from tndsl.verify import equivalent, prove_all
from tndsl.verify.compiled import compare_compiled
from tndsl.verify.symbolic import Expander, render_polynomial

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_TEXTS = {p.name: p.read_text() for p in sorted((ROOT / "examples").glob("*.tn"))}

DIMS = ("A", "B", "C")
INDEX_POOL = {"A": ("a", "a2", "a3"), "B": ("b", "b2", "b3"), "C": ("c", "c2")}
BOXES = ("relu", "tanh", "sigmoid", "gelu", "exp", "identity", "silu")


def fuzz(cases: int, derandomize: bool = True):
    """Settings of a fixed-size run without shrinking or an example database, so CI time
    is predictable; a failure prints the whole generated example, which reproduces it.
    Derandomized by default (the examples follow from the test); `derandomize=False`
    with hypothesis's `@seed(n)` gives the examples of seed n."""
    return settings(max_examples=cases, deadline=None, derandomize=derandomize,
                    database=None, phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def run_part(body, strategy, cases: int, part: int) -> None:
    """Run `body(example)` on `cases` examples of `strategy`, the ones of seed `part`.

    A long fuzz test is split into parts (`pytest.mark.parametrize("part", ...)`) so
    pytest-xdist spreads it over the cores instead of one worker holding all of it.
    Each part has its own fixed seed: parts draw different examples, and a run is
    repeatable."""
    @seed(part)
    @fuzz(cases, derandomize=False)
    @given(strategy)
    def run(example):
        body(example)

    run()


@contextmanager
def bounded(seconds: float):
    """Raise TimeoutError if the block runs longer than `seconds` (a hang is a bug)."""
    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_pipeline(text: str, name: str = "fuzz.tn") -> "tndsl.Program | None":
    """check, compile to source, draw to DOT, verify; only TnError may escape."""
    try:
        program = tndsl.parse(text, name)
    except tndsl.TnError:
        return None
    for stage in (lambda: program.compile(), lambda: to_dot(program), lambda: prove_all(program)):
        try:
            stage()
        except tndsl.TnError:
            pass
    return program


@st.composite
def valid_programs(draw):
    """A random program, valid by construction, drawn so that every construct of the
    language appears (docs/robustness.md lists them; `tests/test_fuzz.py` measures it):
    sized, derived and unsized dims; params (scalar ones too, every initialiser form) and
    inputs (one-hot too); equations whose terms are products of tensors, bracketed
    sums, element-wise boxes, boxes over legs and masks, nested up to two deep, with
    contractions, diagonals, copy legs, `ones` (broadcast and summing out), coefficients
    anywhere in a product (numbers, dims, `sqrt`, scalar arithmetic), division, unary
    minus and differences; `check`s of an equation against its own right-hand side; a
    block of three inputs (an expression and a call among the arguments), one without
    inputs, one returning a scalar, calls with a rename and an instance path, loops with
    number and dim bounds that rebind an accumulator, and paths with number and
    loop-variable segments."""
    return _ProgramWriter(draw).program()


# Dims of legs: three sized, a derived one and an unsized one (verification gives it a size).
LEG_DIMS = ("A", "B", "C", "D", "U")
FREE_NAMES = {"A": ("a", "a2", "a3"), "B": ("b", "b2", "b3"), "C": ("c", "c2", "c3"),
              "D": ("d", "d2"), "U": ("u", "u2")}
# Scalars a term may be multiplied by, and divided by.
SCALARS = ("2", "0.5", "3", "1.5e-1", "2e0", "-2", "A", "sqrt(B)", "(1 + 1 / 2)",
           "(C - 1)", "sqrt(A * 2)", "-(3 / 4)")
DIVISORS = ("4", "sqrt(A)", "(B + 1)", "2.5")
LEG_BOXES = ("softmax", "layernorm", "rmsnorm")
ELEMENTWISE_BOXES = BOXES + ("gelu_tanh", "gelu_new", "σ", "gelu_bloom")
COMPARISONS = ("<=", "==", "<", "!=", ">=", ">")
INITS = ("", " init normal()", " init normal(0.02)", " init normal(-1, 0.5)",
         " init uniform(-1, 1.5)", " init uniform(-2.5, 3)", " init constant(-2)",
         " init zeros", " init ones")
MAX_NESTING = 2  # composites (brackets, boxes, masks) inside composites
# Factors that wrap a sum, with how many legs each may have.
COMPOSITES = {"bracket": (0, 2), "box": (0, 2), "legbox": (1, 2), "mask": (2, 3)}


class _ProgramWriter:
    """Draws one program. Terms are built top-down: the free legs come first, every leg
    of every factor gets an index (a free one, a new contracted one, one contracted
    once so far, an already used free one: a copy leg, or its neighbour's: a diagonal),
    and `ones` closes what is left open (a free leg no factor has is broadcast; a
    contracted index used once is summed out)."""

    def __init__(self, draw):
        self.draw = draw
        self.fresh = 0
        self.tensors: dict[str, tuple[str, ...]] = {}
        self.grounded: set[str] = set()  # indices on a tensor so far in this equation
        self.comparisons = 0

    def pick(self, options):
        return self.draw(st.sampled_from(options))

    def chance(self, percent: int) -> bool:
        return self.draw(st.integers(0, 99)) < percent

    def new_index(self) -> str:
        self.fresh += 1
        return f"k{self.fresh}"

    # ---- expressions -------------------------------------------------------------------
    def sum(self, free: list[tuple[str, str]], depth: int) -> str:
        text = ""
        for n in range(self.draw(st.integers(1, 3 if depth == 0 else 2))):
            if n == 2 and self.chance(50):
                break  # a third term only sometimes: sums of three cost time, not coverage
            term = self.term(free, depth)
            if n == 0:
                text = term
            else:
                text += f" {self.pick(('+', '-'))} {term}"
        return text

    def term(self, free: list[tuple[str, str]], depth: int) -> str:
        slots = []  # (kind, dims of its legs)
        for _ in range(self.draw(st.integers(1, 3 if depth == 0 else 2))):
            if depth < MAX_NESTING and self.chance(30 if depth == 0 else 20):
                kind = self.pick(tuple(COMPOSITES))
                slots.append((kind, tuple(self.pick(LEG_DIMS[:4]) for _ in
                                          range(self.draw(st.integers(*COMPOSITES[kind]))))))
            else:
                name = self.pick(sorted(self.tensors))
                slots.append((name, self.tensors[name]))
        uses: dict[str, int] = {}
        dims_of = dict(free)
        assigned = []
        for kind, legs in slots:
            names: list[str] = []
            for dim in legs:
                names.append(self.index_for(dim, free, uses, dims_of, names,
                                            composite=kind in COMPOSITES))
                uses[names[-1]] = uses.get(names[-1], 0) + 1
            assigned.append((kind, names))
        for kind, names in assigned:
            if kind in self.tensors:
                self.grounded.update(names)
        factors = [self.factor(kind, names, dims_of, depth) for kind, names in assigned]
        closing = [i for i, _ in free if not uses.get(i)] + \
            sorted(i for i, n in uses.items() if n == 1 and i not in dict(free))
        # `ones` takes its dims from the rest of the equation: an index seen on no tensor
        # yet is closed with a tensor of its dim instead.
        ones = [i for i in closing if i in self.grounded]
        for i in closing:
            if i not in self.grounded:
                factors.insert(self.draw(st.integers(0, len(factors))), f"g{dims_of[i]}[{i}]")
                self.grounded.add(i)
        if ones:
            factors.insert(self.draw(st.integers(0, len(factors))), f"ones[{', '.join(ones)}]")
        if self.chance(40):
            factors.insert(self.draw(st.integers(0, len(factors))), self.pick(SCALARS))
        text = " * ".join(factors)
        if self.chance(12):
            text += f" / {self.pick(DIVISORS)}"
        if self.chance(10):
            text = "-" + text
        return text

    def index_for(self, dim, free, uses, dims_of, taken, *, composite) -> str:
        """An index for a leg of dim `dim`; a composite's legs must differ (they are
        its free legs, named)."""
        def ok(i):
            return dims_of.get(i) == dim and not (composite and i in taken)
        unused_free = [i for i, d in free if d == dim and not uses.get(i) and ok(i)]
        used_free = [i for i, d in free if d == dim and uses.get(i) and ok(i)]
        half_open = sorted(i for i, n in uses.items() if n == 1 and i not in dict(free)
                           and ok(i))
        choice = self.draw(st.integers(0, 9))
        if choice < 4 and unused_free:
            return self.pick(unused_free)
        if choice < 7 and half_open:
            return self.pick(half_open)
        if choice == 7 and used_free:
            return self.pick(used_free)  # a copy leg: a free index shared by factors
        if choice == 8 and taken and not composite and dims_of.get(taken[-1]) == dim:
            return taken[-1]  # a diagonal, `W[c, c]`
        index = self.new_index()
        dims_of[index] = dim
        return index

    def factor(self, kind: str, names: list[str], dims_of, depth: int) -> str:
        if kind not in COMPOSITES:  # a tensor or an earlier equation
            return f"{kind}[{', '.join(names)}]"
        inner = self.sum([(i, dims_of[i]) for i in names], depth + 1)
        if kind == "bracket":
            return f"({inner})"
        if kind == "box":
            # exp only outermost: exp(exp(x)) overflows float64 on random data.
            boxes = ELEMENTWISE_BOXES if depth == 0 else tuple(
                b for b in ELEMENTWISE_BOXES if b != "exp")
            # One draw for both rarer boxes, so that adding `step` left the other draws as
            # they were: a box with a parameter (soft-capping at ±c), or a Heaviside step
            # (JumpReLU's gate: 1 where x > 0, else 0).
            roll = self.draw(st.integers(0, 99))
            if roll < 15:
                return f"softcap({inner}, {self.pick(('2.5', 'A', '0.5'))})"
            if roll < 25:
                return f"step({inner})"
            return f"{self.pick(boxes)}({inner})"
        if kind == "legbox":
            function = self.pick(LEG_BOXES)
            legs = names[:self.draw(st.integers(1, len(names)))]
            if self.chance(20):  # top-k routing: the k largest kept, renormalised or not
                k = self.pick(("1", "2", "A"))
                routed = f"topk[{', '.join(legs)}](softmax[{', '.join(legs)}]({inner}), {k})"
                return f"normalize[{', '.join(legs)}]({routed})" if self.chance(50) else routed
            if function == "softmax" and len(names) >= 2 and self.chance(50):
                inner += f" where {self.conditions(names)}"  # a masked softmax
            return f"{function}[{', '.join(legs)}]({inner})"
        return f"({inner} where {self.conditions(names)})"

    def conditions(self, names: list[str]) -> str:
        parts = []
        for _ in range(self.draw(st.integers(1, 2))):
            left = self.pick(names)
            right = self.pick([n for n in names if n != left])
            # In turn, from a drawn start: each operator occurs, whatever the draws favour.
            self.comparisons += 1 + self.draw(st.integers(0, 1))
            parts.append(f"{left} {COMPARISONS[self.comparisons % len(COMPARISONS)]} {right}")
        return " and ".join(parts)

    # ---- the program -------------------------------------------------------------------
    def program(self) -> str:
        draw = self.draw
        self.comparisons = draw(st.integers(0, len(COMPARISONS) - 1))
        sizes = {d: draw(st.integers(2, 4)) for d in DIMS}
        lines = [f"dim {d} = {sizes[d]}" for d in DIMS]
        lines.append(f"dim D = {self.pick(('A + 1', '2 * C - 1', 'B * C / C', '(A + B) - 1'))}")
        lines.append("dim U")
        for k in range(draw(st.integers(2, 4))):
            legs = tuple(draw(st.lists(st.sampled_from(LEG_DIMS[:4] + ("U",) * (k % 2)),
                                       min_size=0 if k >= 2 else 1, max_size=3)))
            self.tensors[f"T{k}"] = legs
            decl = [f"l{j}: {d}" for j, d in enumerate(legs)]
            if draw(st.booleans()):
                lines.append(f"param T{k}[{', '.join(decl)}]{self.pick(INITS)}")
            else:
                if legs and self.chance(25):
                    j = draw(st.integers(0, len(legs) - 1))
                    decl[j] = f"l{j}: onehot {legs[j]}"
                lines.append(f"input T{k}[{', '.join(decl)}]")
        lines += [f"param g{d}[i: {d}]" for d in LEG_DIMS[:4]]
        if self.chance(50):
            lines += self.fixed_tensors()
        equations = []
        for k in range(draw(st.integers(1, 3))):
            self.grounded = set()
            free = self.free_legs()
            rhs = self.sum(free, 0)
            lhs = f"E{k}[{', '.join(i for i, _ in free)}]"
            lines.append(f"{lhs} = {rhs}")
            equations.append((lhs, rhs, free))
            self.tensors[f"E{k}"] = tuple(d for _, d in free)
        for lhs, rhs, free in equations:
            label = self.pick(("", "same: ", "rhs: "))
            if self.chance(20):  # explicit legs: copy legs are not free by Einstein's rule
                legs = f"[{', '.join(i for i, _ in free)}] "
                lines.append(f"check {label}{legs}{lhs} == {rhs}")
            elif self.chance(15):
                lines.append(f"check {label}{lhs} == {lhs}")
        lines += self.blocks()
        return "\n".join(lines) + "\n"

    def fixed_tensors(self) -> list[str]:
        """A rotary map and a head grouping (built-in fixed tensors), each applied the one
        way the compiler has a cheap form for: to one factor with the position leg."""
        heads = 2 * self.draw(st.integers(1, 2))       # rotated pairs need an even size
        rotated = self.pick(("", ", 0.5")) if heads == 4 else ""
        rotated += self.pick(("", ", interleaved"))    # GPT-J's pairs (2i, 2i + 1)
        theta = self.pick(("10000", "100", "7.5"))
        return [f"dim Pos = {self.draw(st.integers(1, 4))}", f"dim Hd = {heads}",
                "dim Kv = 2", f"dim Hq = {2 * self.draw(st.integers(1, 2))}",
                f"fixed Rot[p: Pos, e: Hd, f: Hd] = rotary({theta}{rotated})",
                "fixed Grp[h: Hq, g: Kv] = grouping",
                "param Tr[l0: Pos, l1: Hd]", "param Tk[l0: Kv, l1: Hd]",
                f"R0[p, e] = {self.pick(('', '2 * ', '-'))}Rot[p, e, f] * Tr[p, f]",
                "R1[p, f] = Rot[p, e, f] * Tr[p, e]",  # the inverse rotation
                f"G0[h, e] = Grp[h, g] * Tk[g, e]{self.pick(('', ' + Grp[h, g] * Tk[g, e]'))}",
                "fixed Ali[h: Hq, p: Pos, s: Pos] = alibi",  # ALiBi: a bias added to scores
                f"A0[h, p, s] = {self.pick(('', '2 * '))}Ali[h, p, s]"
                f"{self.pick(('', ' + Tr[p, f] * Tr[s, f] * ones[h]'))}"]

    def free_legs(self) -> list[tuple[str, str]]:
        free = []
        for _ in range(self.draw(st.integers(0, 3))):
            dim = self.pick(LEG_DIMS[:4])
            names = [n for n in FREE_NAMES[dim] if n not in dict(free)]
            if names:
                free.append((self.pick(names), dim))
        return free

    def blocks(self) -> list[str]:
        """A block over one tensor instantiated in a loop that rebinds an accumulator,
        a block of two inputs called with a rename, and one without inputs."""
        draw, lines = self.draw, []
        source, legs = self.pick(sorted((n, l) for n, l in self.tensors.items() if l))
        names = [f"v{j}" for j in range(len(legs))]
        decl = ", ".join(f"{n}: {d}" for n, d in zip(names, legs))
        index = ", ".join(names)
        lines.append(f"block Scale(x[{decl}]) -> [{decl}] {{\n    param w[{decl}]{self.pick(INITS)}\n"
                     f"    return {self.pick(ELEMENTWISE_BOXES)}(x[{index}] * w[{index}])\n}}")
        lines.append(f"acc[{index}] = {source}[{index}]")
        bound = self.pick(("1", "2", "3", "A", "B"))
        scale = self.pick(("", "l * ", "(l + 1) * "))
        if self.chance(50):
            lines.append(f"for l in 0..{bound} {{\n"
                         f"    acc[{index}] = acc[{index}] + {scale}Scale(acc) as layers.{{l}}\n}}")
        else:  # a per-layer choice, decided at unrolling
            condition = self.pick(("l % 2 == 0", "(l + 1) % 2 != 0 and l < A", "l >= 1",
                                   "l % B == 1"))
            lines.append(f"for l in 0..{bound} {{\n    if {condition} {{\n"
                         f"        acc[{index}] = acc[{index}] + {scale}Scale(acc) as layers.{{l}}\n"
                         f"    }} else {{\n"
                         f"        acc[{index}] = acc[{index}] - Scale(acc) as layers.{{l}}\n"
                         f"    }}\n}}")
        lines.append(f"final[{index}] = 2 * acc[{index}] - layers.0.w[{index}]")
        if self.chance(60):
            first = legs[0]
            lines.append(f"block Pair(x[{decl}], y[i: {first}], s[]) -> [{decl}] {{\n"
                         f"    h[{index}] = x[{index}] * y[v0] * s[]\n"
                         f"    return (h[{index}] + x[{index}]) * 0.5\n}}")
            renamed = ", ".join(f"r{j}" for j in range(len(legs)))
            # (not a bare number: a term of numbers only is not compiled yet, a TnError)
            scalar = self.pick(("gA[j] * gA[j]", "-gB[j] * gB[j] / 2"))
            lines.append(f"paired[{renamed}] = Pair({source}, Const() as inner, {scalar})"
                         f"[{renamed}] as pairs.{draw(st.integers(0, 9))}.p")
            lines.append(f"block Const() -> [i: {first}] {{\n    param c[i: {first}]\n"
                         f"    return c[i]\n}}")
            lines.append(f"constant[q] = Const()[q] as consts.{draw(st.integers(0, 3))}")
        if self.chance(40):
            lines.append(f"block Dot(x[{decl}]) -> [] {{\n    return x[{index}] * x[{index}]\n}}")
            lines.append(f"norm[] = Dot({source})[] as dot")
        return lines


TOKENS = ["(", ")", "[", "]", "{", "}", "*", "+", "-", "/", "=", "==", ",", ":", ".", "..",
          "where", "as", "for", "block", "param", "input", "dim", "check", "onehot", "init",
          "σ", "é", "日本", "\u200b", "\x00", "99999999999999999999999", "0", "1e308",
          "softmax[", "relu(", "ones[", "__import__", "os.system", "class", "lambda"]


@st.composite
def mutations(draw):
    """An example damaged the way an editor, a paste or an attacker would."""
    name = draw(st.sampled_from(sorted(EXAMPLE_TEXTS)))
    text = EXAMPLE_TEXTS[name]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "truncate", "insert",
                                     "nest", "long", "number"]))
        n = len(text)
        i = draw(st.integers(0, max(0, n - 1)))
        j = min(n, i + draw(st.integers(1, 40)))
        if kind == "delete":
            text = text[:i] + text[j:]
        elif kind == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif kind == "swap" and j < n:
            k = min(n, j + draw(st.integers(1, 40)))
            text = text[:i] + text[j:k] + text[i:j] + text[k:]
        elif kind == "truncate":
            text = text[:i]
        elif kind == "insert":
            text = text[:i] + " " + draw(st.sampled_from(TOKENS)) + " " + text[i:]
        elif kind == "nest":
            depth = draw(st.integers(1, 300))
            text = text[:i] + "(" * depth + text[i:j] + ")" * draw(st.integers(0, depth)) + text[j:]
        elif kind == "long":
            text = text[:i] + " + x[p, m]" * draw(st.integers(1, 3000)) + text[i:]
        elif kind == "number":
            text = text[:i] + str(draw(st.integers(0, 10**30))) + text[j:]
    return text


# ---- differential checks ------------------------------------------------------------------

# Sizes for the unsized dim of random programs (verification needs every size).
FUZZ_DIMS = {"U": 3}


def compiled_mismatches(text: str, program=None) -> tuple[list[str], int]:
    """Compile a valid program and compare every output with the reference evaluator
    (float64, the relative tolerance of `verify --compiled`). Returns the rendered report
    if any output differs (else []) and how many outputs could not be compared because
    the reference itself overflowed on the random data (exp or tanh of ~700)."""
    program = program or tndsl.parse(text, "random.tn", FUZZ_DIMS)
    outputs = [eq.name for eq in program.outputs]
    report = compare_compiled(program, dims=FUZZ_DIMS, outputs=outputs)
    overflowed = [n for n, scale in report.scales.items() if not math.isfinite(scale)]
    wrong = [n for n, d in report.differences.items()
             if n not in overflowed and not d <= report.allowed(n)]
    return ([report.render()] if wrong else []), len(overflowed)


def expansion_failures(text: str, program=None) -> list[str]:
    """Each box-free equation proven equal to its own symbolic expansion written back
    as `.tn` (the expansion against the symbolic tier, and the residual printer), and
    no `check` of the program refuted (they state true identities)."""
    program = program or tndsl.parse(text, "random.tn", FUZZ_DIMS)
    failures = []
    rebound = {eq.name.split("@")[0] for eq in program.equations if "@" in eq.name}
    for eq in program.equations:
        if eq.instance or not eq.indices or eq.name.split("@")[0] in rebound:
            continue
        expander = Expander(program)
        dims = {leg.name: leg.dim for leg in eq.index_dims}
        try:
            poly = expander.side(eq.rhs, eq.indices, dims)
        except tndsl.TnError:
            continue  # over the expansion limit: the symbolic tier declines, correctly
        if not poly or expander.has_boxes:
            continue  # box-free equations only: a box's diagonal has no .tn spelling
        expanded = render_polynomial(poly)
        result = equivalent(program, eq.name, expanded, legs=eq.indices)
        if result.status != "proven":
            failures.append(f"{eq.name} vs {expanded}: {result.render()}")
    for result in prove_all(program):
        if result.status == "refuted":
            failures.append(result.render())
    return failures


# ---- programs from the grammar alone ----------------------------------------------------

NAMES = ("x", "W", "A", "N", "i", "j", "k", "relu", "softmax", "sqrt", "ones", "Blk", "l",
         "blocks", "p", "s")
INTS = ("0", "1", "2", "3")
FLOATS = ("0.5", "1e-3", "2.5")


@lru_cache(maxsize=None)
def _bnf() -> tuple[dict[str, list[tuple[str, ...]]], dict[str, str], dict[str, int]]:
    """The grammar as Lark compiled it (every optional part and repetition expanded into
    plain alternatives): rules, the text of fixed terminals, and each rule's height (the
    fewest expansion levels to reach only terminals), used to end derivations."""
    parser = lark_parser()
    rules: dict[str, list[tuple[str, ...]]] = {}
    for rule in parser.rules:
        rules.setdefault(rule.origin.name, []).append(tuple(s.name for s in rule.expansion))
    fixed = {}
    for terminal in parser.terminals:
        if terminal.pattern.type == "str":
            fixed[terminal.name] = terminal.pattern.value
    height = {name: math.inf for name in rules}
    changed = True
    while changed:
        changed = False
        for name, alternatives in rules.items():
            best = min(1 + max((height.get(s, 0) for s in alt), default=0)
                       for alt in alternatives)
            if best < height[name]:
                height[name], changed = best, True
    return rules, fixed, height


@st.composite
def grammar_sentences(draw, depth: int = 11):
    """Random text derived from the grammar's own rules: syntactically valid, with every
    production reachable, meaning anything at all (most are refused by elaboration or
    the checker, which must do so with a located error)."""
    rules, fixed, height = _bnf()
    tokens: list[str] = []
    stack: list[tuple[str, int]] = [("start", 0)]
    while stack:  # iterative, depth-first, left to right
        symbol, level = stack.pop()
        if symbol in rules:
            alternatives = rules[symbol]
            if level >= depth:  # close off: only the shortest ways down
                low = min(1 + max((height.get(s, 0) for s in alt), default=0)
                          for alt in alternatives)
                alternatives = [alt for alt in alternatives
                                if 1 + max((height.get(s, 0) for s in alt), default=0) == low]
            if symbol.startswith("__") and len(alternatives) == 2:
                # A repetition (`x ("," x)*`): [one more, the rest]; lean to longer lists,
                # so that lists of three and more are common too.
                chosen = alternatives[min(1, draw(st.integers(0, 2)))]
            else:
                chosen = alternatives[draw(st.integers(0, len(alternatives) - 1))]
            stack.extend((s, level + 1) for s in reversed(chosen))
        elif symbol in fixed:
            tokens.append(fixed[symbol])
        else:
            tokens.append(draw(st.sampled_from({"NAME": NAMES, "INT": INTS, "FLOAT": FLOATS,
                                                "COMPARE": COMPARISONS}[symbol])))
    # Whitespace and comments are free between tokens: vary them too (and so tell apart
    # otherwise equal sentences, the empty file among them).
    separators = [draw(st.sampled_from(SEPARATORS)) for _ in tokens]
    comment = f"# sentence {draw(st.integers(0, 99))}\n" if draw(st.booleans()) else ""
    return comment + "".join(t + sep for t, sep in zip(tokens, separators)) + "\n"


SEPARATORS = (" ", " ", " ", "\n", "\t", "  # a comment\n")


# ---- coverage -------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _counting_parser():
    """A parser of the same grammar whose every reduction counts its production."""
    parser = lark.Lark(grammar_path().read_text(encoding="utf-8"), parser="lalr",
                       maybe_placeholders=True)
    counts: Counter = Counter()
    callbacks = parser.parser.parser.parser.callbacks
    for rule, callback in list(callbacks.items()):
        label = production_label(rule, parser)

        def counted(children, label=label, callback=callback):
            counts[label] += 1
            return callback(children)
        callbacks[rule] = counted
    return parser, counts


def production_label(rule, parser) -> str:
    """`atom: path "(" args ")" rename instance  -> call`: a production as the grammar
    spells it (after Lark expands optional parts and repetitions into alternatives)."""
    fixed = {t.name: t.pattern.value for t in parser.terminals if t.pattern.type == "str"}
    body = " ".join(f'"{fixed[s.name]}"' if s.name in fixed else s.name
                    for s in rule.expansion) or "(empty)"
    return f"{rule.origin.name}: {body}" + (f"  -> {rule.alias}" if rule.alias else "")


def all_productions() -> list[str]:
    parser, _ = _counting_parser()
    return sorted({production_label(rule, parser) for rule in parser.rules})


def production_counts(text: str) -> Counter:
    """How often each production is used to parse `text` (empty if it does not parse)."""
    parser, counts = _counting_parser()
    counts.clear()
    try:
        parser.parse(text)
    except lark.exceptions.LarkError:
        return Counter()
    return Counter(counts)


def _factor_kinds(expr: ir.Sum, inside: bool, found: Counter) -> None:
    found["Sum"] += 1
    for term in expr.terms:
        found["Term"] += 1
        if term.coefficient != 1:
            found["Term: coefficient ≠ 1"] += 1
            if term.coefficient.free_symbols:
                found["Term: coefficient with a dim"] += 1
            if any(not isinstance(f, ir.Ref) for f in term.factors):
                found["Term: coefficient on a bracket, box or mask"] += 1
        if term.coefficient.is_number and term.coefficient < 0:
            found["Term: negative coefficient"] += 1
        for factor in term.factors:
            if isinstance(factor, ir.Ref):
                found["Ref"] += 1
                if factor.name == ir.ONES:
                    found["Ref: ones"] += 1
                if len(set(factor.indices)) < len(factor.indices):
                    found["Ref: diagonal (index repeated)"] += 1
                if not factor.indices:
                    found["Ref: no legs"] += 1
                continue
            argument = factor if isinstance(factor, ir.Sum) else factor.argument
            if isinstance(factor, ir.Sum):
                found["Sum: bracketed factor"] += 1
                if inside:
                    found["Sum: bracket nested in a composite"] += 1
            elif isinstance(factor, ir.Box):
                found["Box"] += 1
                found[f"Box: {factor.function}"] += 1
                if factor.args:
                    found["Box: with a parameter"] += 1
                if len(argument.terms) > 1:
                    found["Box: over a sum"] += 1
                if factor.function == "softmax" and len(argument.terms) == 1 and \
                        isinstance(argument.terms[0].factors[0], ir.Mask):
                    found["Box: softmax of a mask"] += 1
            else:
                found["Mask"] += 1
                for condition in factor.conditions:
                    found["Condition"] += 1
                    found[f"Condition: {condition.op}"] += 1
            _factor_kinds(argument, True, found)


def ir_kinds(program) -> Counter:
    """How often each IR node kind (every class of tndsl/lang/ir.py, and the shapes that
    matter to lowering) occurs in a checked program."""
    network, found = program.network, Counter()
    found["Network"] += 1
    for dim in network.dims:
        found["Dim"] += 1
        found["Dim: no size" if dim.size is None else
              "Dim: derived" if dim.size.free_symbols else "Dim: sized"] += 1
    for tensor in network.tensors:
        found["Tensor"] += 1
        found[f"Tensor: {tensor.kind}"] += 1
        found["Leg"] += len(tensor.legs)
        if tensor.onehot:
            found["Tensor: one-hot input"] += 1
        if not tensor.legs:
            found["Tensor: scalar"] += 1
        if tensor.fixed is not None:
            found["Fixed"] += 1
            found[f"Fixed: {tensor.fixed.function}"] += 1
            for option in tensor.fixed.options:
                found[f"Fixed: {tensor.fixed.function} {option}"] += 1
        if tensor.init is not None:
            found["Init"] += 1
            found[f"Init: {tensor.init.name}"] += 1
    for eq in network.equations:
        found["Equation"] += 1
        if not eq.indices:
            found["Equation: scalar"] += 1
        if "@" in eq.name:
            found["Equation: rebound in a loop"] += 1
        if eq.instance:
            found["Equation: in a block instance"] += 1
        for term in eq.rhs.terms:
            counts = Counter(i for f in term.factors for i in ir.indices(f))
            if any(counts[i] > 1 for i in eq.indices):
                found["Term: copy leg (a free index shared by factors)"] += 1
        _factor_kinds(eq.rhs, False, found)
    for instance in network.instances:
        found["Instance"] += 1
        found["Binding"] += len(instance.bindings)
    for check in network.checks:
        found["Check"] += 1
        if check.explicit_legs is not None:
            found["Check: explicit legs"] += 1
        _factor_kinds(check.lhs, False, found)
        _factor_kinds(check.rhs, False, found)
    return found


def ir_kind_names() -> list[str]:
    """Every kind `ir_kinds` can report: the IR's classes and the shapes listed there."""
    classes = sorted(name for name, value in vars(ir).items()
                     if isinstance(value, type) and dataclasses.is_dataclass(value)
                     and value.__module__ == ir.__name__)
    shapes = ["Dim: sized", "Dim: derived", "Dim: no size", "Tensor: param", "Tensor: input",
              "Tensor: fixed", "Fixed: rotary", "Fixed: grouping", "Fixed: alibi",
              "Fixed: rotary interleaved", "Box: with a parameter",
              "Tensor: one-hot input", "Tensor: scalar", "Equation: scalar",
              "Equation: rebound in a loop", "Equation: in a block instance",
              "Check: explicit legs", "Term: coefficient ≠ 1", "Term: coefficient with a dim",
              "Term: coefficient on a bracket, box or mask", "Term: negative coefficient",
              "Term: copy leg (a free index shared by factors)", "Ref: ones",
              "Ref: diagonal (index repeated)", "Ref: no legs", "Sum: bracketed factor",
              "Sum: bracket nested in a composite", "Box: over a sum", "Box: softmax of a mask"]
    shapes += [f"Box: {name}" for name in sorted(boxes.BOXES)]
    shapes += [f"Condition: {op}" for op in COMPARISONS]
    shapes += [f"Init: {name}" for name in sorted(inits.INITIALIZERS)]
    return classes + shapes


@dataclasses.dataclass
class Coverage:
    """Counts over one run of the fuzzer: productions per generator, IR kinds of the
    valid programs, and how many cases each generator produced."""
    productions: dict[str, Counter] = dataclasses.field(default_factory=dict)
    kinds: Counter = dataclasses.field(default_factory=Counter)
    cases: Counter = dataclasses.field(default_factory=Counter)

    def record(self, generator: str, text: str, program=None) -> None:
        self.cases[generator] += 1
        self.productions.setdefault(generator, Counter()).update(production_counts(text))
        if program is not None:
            self.kinds.update(ir_kinds(program))

    def below(self, least: int) -> list[str]:
        """Productions and IR kinds generated fewer than `least` times in all."""
        total = sum(self.productions.values(), Counter())
        return [f"production {p}" for p in all_productions() if total[p] < least] + \
            [f"IR kind {k}" for k in ir_kind_names() if self.kinds[k] < least]

    def report(self) -> str:
        generators = sorted(self.productions)
        width = max(len(p) for p in all_productions() + ir_kind_names())
        lines = ["cases: " + ", ".join(f"{g} {self.cases[g]}" for g in generators),
                 f"{'grammar production':<{width}}  " + "  ".join(f"{g:>8}" for g in generators)]
        for p in all_productions():
            lines.append(f"{p:<{width}}  " + "  ".join(f"{self.productions[g][p]:>8}"
                                                        for g in generators))
        lines.append(f"{'IR node kind (valid programs)':<{width}}  {'count':>8}")
        for k in ir_kind_names():
            lines.append(f"{k:<{width}}  {self.kinds[k]:>8}")
        return "\n".join(lines)


# ---- mutants: deliberately broken lowerings, to show the fuzzer catches them ------------

@contextmanager
def mutant(name: str):
    """Code generation with one lowering broken, for the duration of the block:

    - `coefficient`: a coefficient is pasted in front of its operand's code without
      brackets, the bug of issue 16 (`2 * (a[i] + b[i])` → `2.0 * a + b`);
    - `sum`: a sum of two or more terms loses its second term;
    - `diagonal`: a repeated index inside one factor (`W[c, c]`) is read as two
      independent legs, so the factor is summed over both instead of its diagonal."""
    from tndsl.codegen import lower as codegen
    saved = {}

    def patch(owner, attribute, value):
        saved[(owner, attribute)] = getattr(owner, attribute)
        setattr(owner, attribute, value)

    if name == "coefficient":
        patch(codegen, "as_left_factor", lambda code: code)
        patch(codegen, "as_right_factor", lambda code: code)
    elif name == "sum":
        original_sum = codegen.Lowering._sum

        def dropped(self, expr, layout, hint, span):
            if len(expr.terms) >= 2:
                expr = ir.Sum(expr.terms[:1] + expr.terms[2:], expr.span)
            return original_sum(self, expr, layout, hint, span)
        patch(codegen.Lowering, "_sum", dropped)
    elif name == "diagonal":
        original_operand = codegen.Lowering._operand

        def undiagonal(self, var, indices, batched):
            seen, renamed = set(), []
            for index in indices:
                if index in seen:
                    twin = f"{index}_twin{len(renamed)}"
                    self.index_dims[twin] = self.index_dims[index]
                    index = twin
                seen.add(index)
                renamed.append(index)
            return original_operand(self, var, renamed, batched)
        patch(codegen.Lowering, "_operand", undiagonal)
    else:
        raise ValueError(f"unknown mutant {name!r}; valid: {', '.join(MUTANTS)}")
    try:
        yield
    finally:
        for (owner, attribute), value in saved.items():
            setattr(owner, attribute, value)


MUTANTS = ("coefficient", "sum", "diagonal")
