"""Generators and the pipeline driver shared by the fuzz tests and bench/fuzz_long.py.

`valid_programs` builds random programs that are valid by construction (so they must
pass); `mutations` damages real examples (so anything may happen, except a crash).
`run_pipeline` runs check, compile (source), DOT and verify, and lets only `TnError`
escape; a hang is turned into an error by `bounded`.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path

from hypothesis import strategies as st

import tndsl
from tndsl.render.dot import to_dot
from tndsl.verify import prove_all

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_TEXTS = {p.name: p.read_text() for p in sorted((ROOT / "examples").glob("*.tn"))}

DIMS = ("A", "B", "C")
INDEX_POOL = {"A": ("a", "a2", "a3"), "B": ("b", "b2", "b3"), "C": ("c", "c2")}
BOXES = ("relu", "tanh", "sigmoid", "gelu", "exp", "identity", "silu")


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
    """A random program: dims, params and inputs, equations with contractions, free and
    shared legs, sums, boxes, masks, a block instantiated in a loop. Valid by
    construction: every term's open legs are exactly its left-hand side's."""
    sizes = {d: draw(st.integers(2, 4)) for d in DIMS}
    lines = [f"dim {d} = {sizes[d]}" for d in DIMS]
    tensors: dict[str, tuple[str, ...]] = {}
    for k in range(draw(st.integers(2, 5))):
        legs = tuple(draw(st.lists(st.sampled_from(DIMS), min_size=1, max_size=3)))
        name = f"T{k}"
        tensors[name] = legs
        kind = draw(st.sampled_from(["param", "input"]))
        decl = ", ".join(f"l{j}: {d}" for j, d in enumerate(legs))
        lines.append(f"{kind} {name}[{decl}]")

    def term(available):
        """A product of 1-3 factors with random index names; returns (text, free legs)."""
        factors, counts = [], {}
        dims_of = {}
        for _ in range(draw(st.integers(1, 3))):
            name = draw(st.sampled_from(sorted(available)))
            indices = []
            for dim in available[name]:
                index = draw(st.sampled_from(INDEX_POOL[dim]))
                indices.append(index)
                counts[index] = counts.get(index, 0) + 1
                dims_of[index] = dim
            factors.append(f"{name}[{', '.join(indices)}]")
        free = tuple(sorted(i for i, n in counts.items() if n == 1))
        return " * ".join(factors), free, dims_of

    equations: dict[str, tuple[str, ...]] = {}
    for k in range(draw(st.integers(1, 4))):
        available = {**tensors, **equations}
        text, free, dims_of = term(available)
        # Extra terms with the same open legs, where the draw allows.
        for _ in range(draw(st.integers(0, 2))):
            other, other_free, _ = term(available)
            if other_free == free:
                coefficient = draw(st.sampled_from(["", "2 * ", "0.5 * ", "-"]))
                text += f" + {coefficient}{other}" if coefficient != "-" else f" - {other}"
        shape = draw(st.sampled_from(["plain", "box", "softmax", "mask", "scaled"]))
        if shape == "box":
            text = f"{draw(st.sampled_from(BOXES))}({text})"
        elif shape == "softmax" and free:
            text = f"softmax[{draw(st.sampled_from(free))}]({text})"
        elif shape == "mask" and len(free) >= 2:
            text = f"({text} where {free[0]} <= {free[1]})"
        elif shape == "scaled":
            text = f"{text} / sqrt({draw(st.sampled_from(DIMS))})"
        name = f"E{k}"
        lines.append(f"{name}[{', '.join(free)}] = {text}")
        equations[name] = tuple(dims_of[i] for i in free)
    # A block over one tensor, instantiated in a loop that rebinds an accumulator.
    source, legs = draw(st.sampled_from(sorted(tensors.items())))
    names = [f"v{j}" for j in range(len(legs))]
    decl = ", ".join(f"{n}: {d}" for n, d in zip(names, legs))
    index = ", ".join(names)
    lines.append(f"block Scale(x[{decl}]) -> [{decl}] {{\n    param w[{decl}]\n"
                 f"    return {draw(st.sampled_from(BOXES))}(x[{index}] * w[{index}])\n}}")
    lines.append(f"acc[{index}] = {source}[{index}]")
    lines.append(f"for l in 0..{draw(st.integers(1, 3))} {{\n"
                 f"    acc[{index}] = acc[{index}] + Scale(acc) as layers.{{l}}\n}}")
    lines.append(f"final[{index}] = 2 * acc[{index}]")
    return "\n".join(lines) + "\n"


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
