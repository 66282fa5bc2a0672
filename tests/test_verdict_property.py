"""The soundness rule as a property (issue 21): on 1,000 generated checks mixing fixed
tensors (rotary, grouping), masks and boxes, no check whose two sides agree under the
real values is ever refuted, and none whose sides differ is ever proven.

The oracle is the float64 reference evaluator with the fixed tensors' built-in values,
on random data at two seeds; the generator pairs random expressions with rewrites that
keep or (by a random mutation) break their value, and the oracle, not the generator,
says which checks are true."""
import random
from dataclasses import dataclass
from typing import Callable

import torch

import tndsl
from tndsl.verify import prove
from tndsl.verify.numeric import random_tensors
from tndsl.verify.reference import Reference
from tndsl.verify.symbolic import Expander

HEADER = """dim Context = 5
dim Head = 4
dim Heads = 4
dim KV = 2
const Theta = 50
fixed R[p: Context, e: Head, f: Head] = rotary(Theta)
fixed G[h: Heads, g: KV] = grouping
input x[p: Context, e: Head]
input y[p: Context, e: Head]
param A[p: Context, s: Context]
"""
CHECKS = 1000


@dataclass
class Form:
    """An expression over legs (p: Context, e: Head), written by `text(p, e, fresh)` in
    one of its equal spellings (`equal=True`) or as given."""
    text: Callable


class Generator:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.counter = 0

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def form(self, depth: int) -> Callable:
        """A function (p, e, variant) -> text; `variant` picks equal spellings at random,
        and with `mutate` one node changes its value."""
        rng = self.rng
        if depth == 0 or rng.random() < 0.25:
            atom = rng.choice(["x", "y"])
            return lambda p, e, v: f"{atom}[{p}, {e}]"
        inner = self.form(depth - 1)
        kind = rng.choice(["rot", "unrot", "mix", "masked", "softmax", "sum", "scale",
                           "group", "relu"])
        other = self.form(depth - 1) if kind == "sum" else None
        op = rng.choice(["<=", "<"])
        gen = self

        def text(p, e, v):
            f, s, h, g = gen.fresh("f"), gen.fresh("s"), gen.fresh("h"), gen.fresh("g")
            pick = v.rng.random
            mutate = v.mutate_here()
            if kind == "rot":
                body = inner(p, f, v)
                if pick() < 0.3:  # Rᵀ R R = R, by orthogonality
                    k = gen.fresh("k")
                    spelled = (f"R[{p}, {e}, {k}] * R[{p}, {g}, {k}] * R[{p}, {g}, {f}] * "
                               f"({body})")
                else:
                    spelled = f"R[{p}, {e}, {f}] * ({body})"
                return spelled.replace(f"R[{p}, {e}, {f}]", f"R[{p}, {f}, {e}]") \
                    if mutate else spelled
            if kind == "unrot":
                body = inner(p, f, v)
                return f"R[{p}, {e}, {f}] * ({body})" if mutate else \
                    f"R[{p}, {f}, {e}] * ({body})"
            if kind == "mix":
                body = inner(s, e, v)
                if pick() < 0.4:  # split into complementary masks
                    return (f"(A[{p}, {s}] where {s} <= {p}) * ({body}) + "
                            f"(A[{p}, {s}] where {s} > {p}{' + 1' if mutate else ''}) * "
                            f"({inner(s, e, v)})")
                return f"A[{s}, {p}] * ({body})" if mutate else f"A[{p}, {s}] * ({body})"
            if kind == "masked":
                body = inner(s, e, v)
                spellings = [f"{s} {op} {p}", f"{p} - {s} {'>=' if op == '<=' else '>'} 0",
                             f"{p} {'>=' if op == '<=' else '>'} {s}"]
                cond = v.rng.choice(spellings)
                if mutate:
                    cond = f"{s} {'<' if op == '<=' else '<='} {p}"
                return f"(A[{p}, {s}] where {cond}) * ({body})"
            if kind == "softmax":
                body = inner(s, e, v)
                shift = f" + A[{p}, {p}] * ones[{s}]" if pick() < 0.5 else ""
                if mutate:
                    shift = f" + A[{s}, {s}] * ones[{p}]"
                masked = f" where {s} <= {p}" if op == "<=" else ""
                return f"softmax[{s}](A[{p}, {s}]{shift}{masked}) * ({body})"
            if kind == "sum":
                a, b = inner(p, e, v), other(p, e, v)
                return f"({a}) + ({b})" if not mutate else f"({a}) - ({b})"
            if kind == "scale":
                c = 2 if not mutate else 3
                return f"{c} * ({inner(p, e, v)})" if pick() < 0.5 else \
                    f"({inner(p, e, v)}) * {c}"
            if kind == "group":  # G·1 = 1 on each head, averaged over heads
                return (f"G[{h}, {g}] * ones[{g}] * ones[{h}] / {'Heads' if not mutate else 'KV'}"
                        f" * ({inner(p, e, v)})")
            # relu: a box without lemmas; relu(relu(x)) = relu(x) only numerically
            body = inner(p, e, v)
            return f"relu(relu({body}))" if pick() < 0.5 and not mutate else f"relu({body})"
        return text


class Variant:
    """Random choices for one spelling; `mutate_here` is true at most once."""

    def __init__(self, rng: random.Random, mutate: bool):
        self.rng = rng
        self.pending = mutate

    def mutate_here(self) -> bool:
        if self.pending and self.rng.random() < 0.5:
            self.pending = False
            return True
        return False


def generate(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    gen = Generator(rng)
    lines = []
    for k in range(n):
        gen.counter = 0  # index names are local to a check
        form = gen.form(rng.choice([1, 2, 2, 3]))
        left = form("p", "e", Variant(random.Random(rng.random()), False))
        right = form("p", "e", Variant(random.Random(rng.random()), rng.random() < 0.5))
        lines.append(f"check c{k}: [p, e] {left} == {right}")
    return lines


def agree(program, values, check) -> bool:
    for data in values:
        lhs, rhs = Reference(program, data).evaluate_check(check)
        scale = max(1.0, float(lhs.abs().max()), float(rhs.abs().max()))
        if float((lhs - rhs).abs().max()) > 1e-9 * scale:
            return False
    return True


def test_no_true_check_is_refuted_and_no_false_one_proven():
    program = tndsl.parse(HEADER + "\n".join(generate(CHECKS)) + "\n")
    assert len(program.checks) == CHECKS
    values = [random_tensors(program, torch.Generator().manual_seed(0))]
    small = program  # its sizes are small already
    true = false = proven = 0
    for check in program.checks:
        expander = Expander(program)
        legs = tuple(leg.name for leg in check.legs)
        dims = {leg.name: leg.dim for leg in check.index_dims}
        lhs, rhs = expander.side(check.lhs, legs, dims), expander.side(check.rhs, legs, dims)
        symbolic_equal = lhs == rhs
        if agree(program, values, check):
            true += 1
            proven += symbolic_equal
            if not symbolic_equal:  # the evaluation tiers decide: never a refutation
                result = prove(program, check, small)
                assert result.status != "refuted", result.render()
        else:
            false += 1
            assert not symbolic_equal, check.label  # never proven
    # The generator makes both kinds, and most true ones are proven outright.
    assert true > 300 and false > 100, (true, false)
    assert proven > 0.6 * true, (proven, true)
