"""The grammar is LALR and conflict-free, and the parser's tree keeps source positions."""
import lark
import pytest

from tndsl.lang.errors import TnSyntaxError
from tndsl.lang.syntax import ast, grammar_path, parse_module
from conftest import EXAMPLES, ROOT


def test_grammar_builds_strict_without_conflicts():
    # strict=True raises on any shift/reduce conflict or terminal collision.
    lark.Lark(grammar_path().read_text(), parser="lalr", strict=True)


def test_grammar_file_is_the_top_level_one_in_a_checkout():
    assert grammar_path() == ROOT / "grammar" / "tn.lark"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_parses(path):
    module = parse_module(path.read_text(), str(path))
    assert module.statements


def test_spans_point_at_the_source_text():
    text = "dim N = 3\ninput x[i: N]\ny[i] = relu(x[i]) * 2\n"
    module = parse_module(text, "t.tn")
    eq = module.statements[2]
    assert isinstance(eq, ast.Equation)
    assert text[eq.rhs.span.start:eq.rhs.span.end] == "relu(x[i]) * 2"
    assert (eq.rhs.span.line, eq.rhs.span.col) == (3, 8)


def test_keywords_are_reserved():
    with pytest.raises(TnSyntaxError, match="unexpected `param`"):
        parse_module("dim A =\nparam W[a: A]\n")


def test_loop_range_is_not_read_as_a_decimal():
    module = parse_module("for l in 0..2 { }\n")
    loop = module.statements[0]
    assert (loop.start.text, loop.stop.text) == ("0", "2")


def test_paths_with_numbers_and_loop_variables():
    module = parse_module("y[] = blocks.0.attn.x[] + blocks.{l}.w[]\n")
    terms = module.statements[0].rhs
    assert terms.left.path.segments == ("blocks", 0, "attn", "x")
    assert isinstance(terms.right.path.segments[1], ast.LoopVar)


def test_deep_nesting_is_refused_with_a_located_error():
    text = "y[i] = " + "(" * 300 + "x[i]" + ")" * 300 + "\n"
    with pytest.raises(TnSyntaxError, match="nested deeper") as info:
        parse_module(text, "deep.tn")
    assert info.value.span.line == 1
