"""Literals that would hang, overflow or silently change value; loops and blocks that
unroll past the statement bound; sizes too large to hold. Each is a located error,
found at once, before the work it would cause."""
import tracemalloc

import pytest
import torch

import tndsl
from tndsl.cli import main
from tndsl.lang.errors import ResourceError, SizeError, TnError, TnSyntaxError
from tndsl.lang.syntax import ast, parse_module
from tndsl.lang.unroll import check_unrolled_size

HEAD = "dim N = 3\ninput x[i: N]\n"


def _error(text: str, kind=TnError) -> TnError:
    # Each of these took from 30 s to forever before, or crashed: the numbers, loops and
    # blocks they denote were built before being refused. Refused from the text instead,
    # the work is proportional to the text, which the peak of memory traced while parsing
    # shows deterministically (no wall-time assertions in tests/): a 100-digit literal's
    # exact value, a loop's unrolled statements or a block's expansion would pass it.
    tracemalloc.start()
    try:
        with pytest.raises(TnError) as info:
            tndsl.parse(text, "t.tn")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    allowed = 4 * 2**20 + 256 * len(text)
    assert peak < allowed, f"parsing {len(text):,} characters took {peak:,} bytes"
    assert all(isinstance(e, kind) for e in getattr(info.value, "errors", [info.value]))
    return info.value


def _located_at(error: TnError, text: str, fragment: str) -> None:
    errors = getattr(error, "errors", [error])
    spans = [text[e.span.start:e.span.end] for e in errors if e.span is not None]
    assert fragment in spans, [e.render() for e in errors]


# ---- literals -------------------------------------------------------------------------

@pytest.mark.parametrize("literal, message", [
    ("1e99999999", "exponent beyond ±400"),          # hung `check` (10^99999999 exactly)
    ("7" * 5000, "has 5,000 digits; the limit is 100"),  # exit 3: int-to-text limit
    ("1e400", "is not finite in float64"),           # was accepted: inf in the model
    ("1e-400", "rounds to 0 in float64"),            # would be 0 in the model, not in proofs
    ("0." + "0" * 120 + "1", "digits; the limit is 100"),
    ("1e00000000000000000000000000000000000000000000000000000000000000000400",
     "is not finite in float64"),  # the exponent is 400, however it is written
])
def test_out_of_range_literals_are_located_errors(literal, message):
    text = HEAD + f"y[i] = {literal} * x[i]\n"
    error = _error(text, TnSyntaxError)
    assert message in error.message
    _located_at(error, text, literal)
    if len(literal) <= 24:
        assert f"`{literal}`" in error.message  # the message names the literal


def test_every_bad_literal_is_reported_at_once_in_every_position():
    with pytest.raises(TnError) as info:
        tndsl.parse("dim N = 3\nparam W[i: N] init normal(1e400, -1e-999)\n"
                    "y[i] = 1e500 * W[i] + 2.5 * W[i]\n", "t.tn")
    spans = sorted((e.span.line, e.span.col) for e in info.value.errors)
    assert spans == [(2, 27), (2, 35), (3, 8)]


def test_literals_at_the_edge_are_exact_and_compile_to_the_right_value():
    # 1.5e308 and 4e-320 (a subnormal) are float64 numbers: accepted, and the compiled
    # model multiplies by exactly them (hand-computed with torch as the oracle).
    big, tiny = "1.5e308", "4e-320"
    program = tndsl.parse(HEAD + f"y[i] = {big} * x[i]\nz[i] = {tiny} * x[i]\n"
                          f"w[i] = {'9' * 100} * x[i]\n")
    x = torch.tensor([0.5, -1.0, 0.25], dtype=torch.float64)
    gen = program.compile(["y", "z", "w"]).build().double()
    out = gen(x)
    assert torch.equal(out["y"], 1.5e308 * x)
    assert torch.equal(out["z"], 4e-320 * x)
    assert torch.equal(out["w"], float("9" * 100) * x)


def test_a_product_of_literals_outside_float64_is_an_error_not_inf():
    text = HEAD + "y[i] = 1e300 * 1e300 * x[i]\nz[i] = x[i] / 1e300 / 1e300\n"
    error = _error(text, SizeError)
    messages = [e.message for e in error.errors]
    assert any("not finite in float64" in m for m in messages)
    assert any("rounds to 0 in float64" in m for m in messages)
    _located_at(error, text, "1e300 * 1e300 * x[i]")


def test_a_coefficient_made_of_sizes_outside_float64_is_an_error():
    text = "dim N = 3\ndim M = 10\ninput x[i: N]\ny[i] = sqrt(M) / 1e300 / 1e300 * x[i]\n"
    error = _error(text, SizeError)
    assert "rounds to 0" in error.message


def test_a_long_product_of_literals_stays_cheap(monkeypatch):
    # 20,000 factors of 1e300 would be a 6,000,000-digit exact number (minutes): the
    # exact product must stop growing just past MAX_COEFFICIENT_BITS (one more factor).
    from tndsl.lang import elaborate
    from tndsl.lang.finite import MAX_COEFFICIENT_BITS, bounded_coefficient

    def bounded(value, span):
        if value.is_Rational:
            bits = int(value.p).bit_length() - int(value.q).bit_length()
            assert abs(bits) <= MAX_COEFFICIENT_BITS + 1024, f"a {bits:,}-bit product"
        return bounded_coefficient(value, span)

    monkeypatch.setattr(elaborate, "bounded_coefficient", bounded)
    text = HEAD + "y[i] = " + " * ".join(["1e300"] * 20_000) + " * x[i]\n"
    error = _error(text, SizeError)
    assert "far outside float64" in error.message


def test_a_check_with_an_infinite_coefficient_is_refused():
    text = HEAD + "check 1e200 * 1e200 * x[i] == x[i]\n"
    assert "not finite" in _error(text, SizeError).message


def test_the_cli_reports_literal_errors_with_exit_1(tmp_path, capsys):
    path = tmp_path / "big.tn"
    path.write_text(HEAD + f"y[i] = {'7' * 5000} * x[i]\n")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3:8: error: number literal" in err and "internal error" not in err


# ---- sizes ----------------------------------------------------------------------------

def test_a_derived_dim_of_4300_digits_is_a_located_error_not_a_crash(tmp_path, capsys):
    factors = " * ".join(["1000000000"] * 480)   # 10^4320
    text = f"dim M = 10\ndim N = {factors}\nparam A[a: M, b: N]\ny[a, b] = A[a, b]\n"
    error = _error(text, SizeError)
    assert "beyond 2^63 - 1" in error.message and error.span.line == 2
    path = tmp_path / "big.tn"
    path.write_text(text)
    for command in ("check", "cost", "compile", "render", "verify"):
        assert main([command, str(path)]) == 1, command
        assert "internal error" not in capsys.readouterr().err


def test_dims_are_at_most_2_to_the_63_minus_1():
    ok = tndsl.parse(f"dim N = {2**63 - 1}\ninput x[i: N]\n")
    assert ok.sizes["N"] == 2**63 - 1
    error = _error(f"dim N = {2**63}\ninput x[i: N]\n", SizeError)
    assert "has a number beyond 2^63 - 1 in its size" in error.message
    error = _error(f"dim A = {2**32}\ndim N = A * A\ninput x[i: N]\n", SizeError)
    assert error.message == ("dim `N` = A**2 is 18,446,744,073,709,551,616, more than "
                             "2^63 - 1, the largest size of a tensor dimension")
    with pytest.raises(SizeError, match="more than 2\\^63 - 1"):
        tndsl.parse("dim N\ninput x[i: N]\n", dims={"N": 2**64})


def test_huge_counts_print_without_overflow_or_zero():
    from tndsl.lang.printer import format_count
    assert format_count(10**23) == "100,000,000,000,000,000,000,000"
    assert format_count(123 * 10**5000) == "≈1.23e+5002"
    assert format_count(-(10**30)) == "≈-1.00e+30"
    # A param of 60 legs of 2^62 each: its count has 1,100 digits, printed, never 0.
    legs = ", ".join(f"l{k}: N" for k in range(60))
    summary = tndsl.parse(f"dim N = {2**62}\nparam W[{legs}]\n").summary()
    digits = str((2**62) ** 60)  # 1,120 digits: under Python's limit, so an oracle
    assert f"≈{digits[0]}.{digits[1:3]}e+{len(digits) - 1} parameters" in summary


# ---- statements after unrolling -------------------------------------------------------

def test_nested_loops_multiply_and_are_refused_before_any_work():
    text = HEAD + "for a in 0..1000 {\n  for b in 0..1000 {\n    y.{a}.{b}[i] = x[i]\n  }\n}\n"
    error = _error(text, ResourceError)
    assert ("this loop unrolls to 1,001,001 statements (1,001,003 in all); at most 200,000"
            in error.message)
    assert (error.span.line, error.span.col) == (3, 1)


def test_blocks_that_double_are_refused_before_any_work():
    lines = [HEAD, "block B0(v[i: N]) -> [i: N] { return v[i] }"]
    for k in range(1, 40):
        lines.append(f"block B{k}(v[i: N]) -> [i: N] {{ return B{k - 1}(v) as a + "
                     f"B{k - 1}(v) as b }}")
    lines.append("y[i] = B39(x) as top")
    text = "\n".join(lines) + "\n"
    error = _error(text, ResourceError)
    # B_k is a return holding two B_(k-1): 2^(k+1) - 1 statements; with the call, 2^40.
    assert f"this statement expands to {2**40:,} statements" in error.message
    assert text[error.span.start:error.span.end] == "y[i] = B39(x) as top"


def _count(text: str, limit: int) -> None:
    module = parse_module(text)
    blocks = {s.name.name: s for s in module.statements if isinstance(s, ast.BlockDef)}
    check_unrolled_size(module.statements, blocks, {"N": 3, "L": 4}.get, limit)


def test_the_count_is_exact_for_loops_whose_bounds_depend_on_outer_loops():
    # 2 declarations + 1 outer `for` + sum over a of (1 inner `for` + a equations)
    # = 2 + 1 + 5 + (0+1+2+3+4) = 18; and elaboration really makes 10 equations.
    text = HEAD + "for a in 0..5 {\n  for b in 0..a {\n    y.{a}.{b}[i] = x[i]\n  }\n}\n"
    _count(text, 18)
    with pytest.raises(ResourceError, match=r"to 16 statements \(18 in all\); at most 17"):
        _count(text, 17)
    assert len(tndsl.parse(text).network.equations) == 10


def test_the_count_includes_block_bodies_per_call_and_dim_bounds():
    # block: 2 statements (equation, return); 4 calls in a loop over L = 4 -> 1 + 4 * (1 + 2)
    text = (HEAD + "block B(v[i: N]) -> [i: N] {\n  h[i] = 2 * v[i]\n  return h[i]\n}\n"
            "for l in 0..L {\n  y.{l}[i] = B(x) as b.{l}\n}\n")
    text = text.replace("dim N = 3\n", "dim N = 3\ndim L = 4\n")
    total = 3 + 1 + 1 + 4 * (1 + 2)  # dims, input, block def, loop
    _count(text, total)
    with pytest.raises(ResourceError):
        _count(text, total - 1)
    # Per iteration: y.l, and in the instance the argument binding, h and out.
    assert len(tndsl.parse(text).network.equations) == 4 * 4


# ---- figures --------------------------------------------------------------------------

def test_expanding_a_deep_residual_stream_is_refused_at_once(monkeypatch):
    # Inlining distributes sums: each layer doubles the terms (before: millions of DOT
    # lines at three layers, minutes at twelve).
    from conftest import ROOT
    from tndsl.render.dot import MAX_DRAWN_TERMS
    from tndsl.render import expand
    program = tndsl.load(ROOT / "examples" / "gpt2_small.tn")
    made = 0

    class Term(expand._Term):  # counts the terms built: ~32,000 before the refusal
        def __init__(self, *args, **kwargs):
            nonlocal made
            made += 1
            assert made <= 100_000, "the expansion is being built, not refused"
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(expand, "_Term", Term)
    with pytest.raises(ResourceError) as info:
        program.render(expand=True)
    assert f"more than {MAX_DRAWN_TERMS:,} terms" in info.value.message
    assert info.value.span.source.line_text(info.value.span.line).startswith("logits[p, v] =")
    assert "--depth" in info.value.hint
    program.render(depth=1)  # a shallower figure of the same equation still draws


# ---- verification (depends on issue 12's bounded verifier tiers, merged from main) -----

def test_a_product_of_13_two_term_sums_is_verified_in_bounded_memory(tmp_path):
    # `check sq: s*s == s*s` with s a product of 13 two-term sums exhausted 6 GB in
    # `verify` within 33 s (2^26 monomials). The symbolic tier must stop at its bound
    # and a bounded tier answer, under an address-space limit of 4 GiB.
    import subprocess
    import sys
    from conftest import ROOT
    lines = ["dim N = 2"] + [f"param P{k}[a: N, b: N]\nparam Q{k}[a: N, b: N]" for k in range(13)]
    lines.append("t0[a, b] = P0[a, b] + Q0[a, b]")
    lines += [f"t{k}[a, c] = t{k - 1}[a, b] * (P{k}[b, c] + Q{k}[b, c])" for k in range(1, 13)]
    lines += ["s[a, b] = t12[a, b]", "check sq: s[a, b] * s[b, c] == s[a, b] * s[b, c]"]
    path = tmp_path / "sums13.tn"
    path.write_text("\n".join(lines) + "\n")
    probe = ("import resource, sys\n"
             "resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))\n"
             "from tndsl.cli import main\n"
             f"sys.exit(main(['verify', {str(path)!r}]))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 check: 1 proven" in result.stdout


def test_a_long_scalar_is_a_located_error_and_one_at_the_edge_is_fine():
    """Consts, eps and mask offsets are evaluated recursively: a 3,000-term sum once
    overflowed Python's stack (found by the long fuzz run); 64 levels still evaluate."""
    def program(n):
        return (f"dim N = 3\nconst Eps = {' + '.join(['1e-6'] * n)}\ninput x[i: N]\n"
                "y[i] = rmsnorm[i](x[i], Eps)\n"
                f"z[i, j] = (x[i] * x[j] where i {'+ 0 ' * (n - 1)}< j)\n")
    ok = tndsl.parse(program(64))
    box = ok.equation("y").rhs.terms[0].factors[0]
    assert box.eps == pytest.approx(64e-6)
    with pytest.raises(TnError) as error:
        tndsl.parse(program(3000))
    message = str(error.value)
    assert "<string>:2:13: error: const `Eps` is nested more than 64 operations deep" in message
    assert "a mask condition is nested more than 64" in message
