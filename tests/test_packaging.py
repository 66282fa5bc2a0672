"""The package installs both ways and finds its grammar in each."""
import os
import subprocess
import sys
import zipfile

from conftest import ROOT

PROBE = ("import tndsl, tndsl.lang.syntax as s, tndsl.codegen.torch, tndsl.verify.prove, "
         "tndsl.passes.cost, tndsl.render.output, tndsl.models.weights; "
         "p = tndsl.parse('dim N = 2\\ninput x[i: N]\\ny[i] = 2 * x[i]\\n'); "
         "print(s.grammar_path()); print(p.equation('y').legs)")


def test_wheel_ships_the_grammar_and_works_outside_the_checkout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(ROOT)], check=True,
                   capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("tndsl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "tndsl/grammar/tn.lark" in archive.namelist()
        names = archive.namelist()
        assert "tndsl/lang/syntax/parser.py" in names
    # Every module of the source tree is in the wheel.
    for module in (ROOT / "tndsl").rglob("*.py"):
        assert module.relative_to(ROOT).as_posix() in names, module
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            cwd=tmp_path, env=env, check=True)
    grammar, legs = result.stdout.splitlines()
    assert grammar == str(site / "tndsl" / "grammar" / "tn.lark")
    assert legs == "(Leg(name='i', dim='N'),)"


def test_installed_package_resolves_the_checkouts_grammar_from_anywhere(tmp_path):
    # The Makefile installs in editable mode; from another directory the package must
    # still be the checkout's and read grammar/tn.lark at the top level.
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            cwd=tmp_path, check=True)
    assert result.stdout.splitlines()[0] == str(ROOT / "grammar" / "tn.lark")


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "tndsl")
    result = subprocess.run([script, "check", "-q", "examples/orthodox.tn"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
