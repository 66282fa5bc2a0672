"""Every subcommand under the same fuzzing as `check` and `compile` (docs/robustness.md):
random valid programs, damaged examples and long index chains go through `check`,
`compile`, `render`, `cost` (text and JSON) and `verify`, as the CLI runs them. Each
may succeed or fail with located errors (exit 1); none may crash (exit 3), hang, or
report an error without file:line:col."""
import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tndsl.cli import main
from tndsl.passes.plan import MAX_OPERANDS
from fuzzing import bounded, fuzz, mutations, run_part, valid_programs

COMMANDS = (["check"], ["compile"], ["render"], ["render", "--expand"], ["cost"],
            ["cost", "--json"], ["verify"])
# Errors about the whole program rather than a place in it (there is no line to show);
# the CLI still starts them with the file.
WHOLE_PROGRAM = ("error: the program has no equation",)


def run_every_command(text: str, capsys, commands=COMMANDS) -> dict[str, int]:
    """Run each subcommand on `text` as a file; check what it printed. Returns the exit
    codes by command."""
    codes = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.tn"
        path.write_text(text, encoding="utf-8")
        for command in commands:
            capsys.readouterr()
            with bounded(60):
                code = main([command[0], str(path), *command[1:]])
            out, err = capsys.readouterr()
            name = " ".join(command)
            assert code in (0, 1), (name, code, err[-2000:], text)
            assert "internal error" not in err and "Traceback" not in err, (name, err, text)
            for line in err.splitlines():
                if "error: " in line and not line.startswith(" "):
                    located = re.match(rf"{re.escape(str(path))}:\d+:\d+: error: ", line)
                    whole = line.startswith(tuple(f"{path}: {w}" for w in WHOLE_PROGRAM))
                    assert located or whole, (name, line, text)
            if code == 1 and command[0] != "verify":
                assert f"{path}:" in err and "error: " in err, (name, err)
            if command == ["cost", "--json"] and code == 0:
                json.loads(out)
            codes[name] = code
    return codes


@fuzz(40)
@given(valid_programs())
def test_every_command_runs_on_random_valid_programs(capsys, text):
    # The generator leaves `dim U` unsized (a size read from the inputs); a param over it
    # needs a size to be built, given as a user would.
    sized = [[*command, "--dim", "U=3"] for command in COMMANDS]
    codes = run_every_command(text, capsys, sized)
    # Valid by construction: nothing but `verify` (a check may be refuted) may fail.
    assert all(code == 0 for name, code in codes.items() if name != "verify"), (codes, text)


@pytest.mark.parametrize("part", range(2))  # two tests, so the workers share them
def test_every_command_fails_only_with_located_errors_on_damaged_examples(capsys, part):
    # `cost --json` shares `cost`'s path to the first error; its output is checked on
    # the valid programs and the chains.
    commands = [c for c in COMMANDS if c != ["cost", "--json"]]
    run_part(lambda text: run_every_command(text, capsys, commands), mutations(), 30, part)


def chain(length: int, size: int = 2) -> str:
    """One matrix multiplied `length` times along a chain of `length + 1` indices."""
    indices = [f"i{k}" for k in range(length + 1)]
    factors = " * ".join(f"A[{indices[k]}, {indices[k + 1]}]" for k in range(length))
    return (f"dim N = {size}\nparam A[a: N, b: N]\n"
            f"y[{indices[0]}, {indices[-1]}] = {factors}\n")


@fuzz(6)
@given(st.integers(2, MAX_OPERANDS))
def test_long_chains_up_to_the_product_bound_cost_render_and_check(capsys, length):
    codes = run_every_command(chain(length), capsys, (["check"], ["cost"], ["cost", "--json"],
                                                      ["render"]))
    assert set(codes.values()) == {0}, codes


@pytest.mark.parametrize("length", [51, 52, 53, 60, MAX_OPERANDS])
def test_chains_past_52_indices_are_costed_exactly(length, capsys):
    # torch.einsum names at most 52 indices; `cost` runs nothing, so it has no such
    # limit (a 53-index chain was `KeyError: 'i9'`, exit 3). A chain of n matrices of
    # size N costs (n - 1) multiplications of N x N by N x N: 2 N^3 flops each.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "chain.tn"
        path.write_text(chain(length))
        assert main(["cost", str(path), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
    assert report["total_flops"] == f"{2 * (length - 1)}*N**3"
    assert report["total_value"] == 2 * (length - 1) * 2**3


def test_a_term_over_the_product_bound_is_a_located_error_in_every_command(capsys):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "chain.tn"
        path.write_text(chain(MAX_OPERANDS + 1))
        assert main(["cost", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"{path}:3:1: error: a term of `y` multiplies "
                              f"{MAX_OPERANDS + 1} tensors; the compiler plans at most "
                              f"{MAX_OPERANDS} in one term")
        assert main(["compile", str(path)]) == 1  # torch.einsum's 52 indices come first
        assert capsys.readouterr().err.startswith(f"{path}:3:1: error: a term with 258 ")


def test_errors_without_a_place_in_the_file_still_name_the_file(capsys):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "empty.tn"
        path.write_text("dim N = 3\n")
        for argv, message in [(["render", str(path)], "the program has no equation to draw"),
                              (["cost", str(path), "nope"], "no equation or instance `nope`"),
                              (["check", str(path), "--dim", "Q=3"],
                               "size given for unknown dim `Q`")]:
            assert main(argv) == 1
            assert capsys.readouterr().err.startswith(f"{path}: error: {message}")
