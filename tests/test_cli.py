"""`tndsl check`: exit codes, where output goes, and no traceback, ever."""
import subprocess
import sys

import pytest

from tndsl import cli
from conftest import ROOT


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "tndsl", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_summary_of_gpt2_small():
    result = run("check", "examples/gpt2_small.tn")
    assert result.returncode == 0
    assert "examples/gpt2_small.tn: ok" in result.stdout
    assert "163,087,441 parameters" in result.stdout
    assert "blocks.{0..11}.attn.W_Q   [h: Heads, m: Model, e: Head]  12 × 768 × 64  (×12)" \
        in result.stdout
    assert "tokens  [p: Context, v: onehot Vocab]" in result.stdout
    assert "outputs  logits[p: Context, v: Vocab]" in result.stdout


def test_errors_go_to_stderr_with_exit_1():
    result = run("check", "tests/errors/three_mistakes.tn")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count(": error: ") == 3
    assert "Traceback" not in result.stderr


def test_one_bad_file_does_not_hide_the_others():
    result = run("check", "tests/errors/unknown_tensor.tn", "examples/orthodox.tn")
    assert result.returncode == 1
    assert "examples/orthodox.tn: ok" in result.stdout


def test_dims_from_the_command_line():
    result = run("check", "examples/mlp.tn", "--dim", "Batch=32")
    assert result.returncode == 0 and "Batch = 32" in result.stdout


@pytest.mark.parametrize("args", [[], ["check"], ["frobnicate"], ["check", "x.tn", "--dim", "B"]])
def test_usage_mistakes_exit_2(args):
    result = run(*args)
    assert result.returncode == 2 and "usage:" in result.stderr


def test_missing_file_is_an_error_not_a_crash():
    result = run("check", "no/such/file.tn")
    assert result.returncode == 1 and "cannot read no/such/file.tn" in result.stderr


def test_warnings_go_to_stderr_and_do_not_fail():
    result = run("check", "tests/errors/unused_param.tn")
    assert result.returncode == 0 and "warning: param `unused` is never used" in result.stderr


def test_internal_failure_is_one_line_and_exit_3(monkeypatch, capsys):
    def broken(args):
        raise ZeroDivisionError("simulated bug")
    monkeypatch.setitem(cli.COMMANDS, "check", broken)
    assert cli.main(["check", "examples/orthodox.tn"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" in err and "report" in err


def test_dump_prints_the_ir():
    result = run("check", "--dump", "examples/orthodox.tn")
    assert result.returncode == 0 and "trace[] = A[i, j] * B[j, k] * C[k, i]" in result.stdout
