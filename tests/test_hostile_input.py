"""Hostile input, round 3 (issue 22): what a user types, names or points tndsl at is
refused with a clear error (exit 1 for the CLI, a TnError or ValueError for the API),
never a traceback, an internal error (exit 3), a hang or a silently wrong model.

- text shown in a terminal goes through one sanitiser (tndsl.lang.text.terminal*);
- files are read bounded: regular files only, at most the limit + 1 bytes;
- CLI arguments are checked before any work;
- weights are floating point and finite (unless allow_nonfinite=True), a sharded
  index's weight_map an object, config.json of any depth a clean error."""
import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import save_file

import tndsl
from tndsl import cli
from tndsl.lang import files
from tndsl.lang.errors import ArgumentError, TnError, excerpt
from tndsl.lang.text import printable, terminal, terminal_output
from tndsl.models.loading import from_pretrained, load_hf, read_checkpoint
from tndsl.models.weights import WeightsError, load_hf_gpt2, load_safetensors
from conftest import ROOT
from test_weights_errors import GOOD, tensors

MLP = str(ROOT / "examples" / "mlp.tn")
ATTN = str(ROOT / "examples" / "attn_only_2l.tn")  # `paths` takes its blocks.1.attn.scores
CHECKED = "dim N = 2\nparam A[i: N, j: N]\ny[i, j] = A[i, j]\ncheck y[i, j] == A[i, j]\n"


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    return code, out, err


# ---- 5. one sanitiser for the terminal ---------------------------------------------------

def test_the_terminal_sanitiser_escapes_everything_a_terminal_acts_on():
    hostile = "a\nb\rc\x1b[2Jd\x08e\x00f\u202eg\u2028h\x9bi\\j"
    shown = terminal(hostile)
    assert shown.isprintable() and "\n" not in shown
    assert shown == r"a\nb\rc\x1b[2Jd\x08e\x00f\u202eg\u2028h\x9bi\\j"
    assert printable("x\x1by\\z") == r"x\x1by\z"   # a source line: backslashes as written
    # what the CLI prints: its own line breaks and tabs kept, nothing else
    assert terminal_output("ok\n\tnext\x1b[31m\r") == "ok\n\tnext\\x1b[31m\\r"
    assert terminal_output("plain σ text\n") == "plain σ text\n"


def test_a_file_name_cannot_forge_a_report_line(tmp_path, capsys):
    forged = tmp_path / "x.tn\nx.tn: 9 checks: 9 proven, 0 refuted, 0 unknown"
    forged.write_text(CHECKED)
    code, out, err = run(["verify", forged], capsys)
    assert code == 0
    lines = out.splitlines()
    assert not any(line.startswith("x.tn: 9 checks") for line in lines)
    assert r"x.tn\nx.tn: 9 checks: 9 proven, 0 refuted, 0 unknown: 1 check: 1 proven" \
        in lines[-1]


@pytest.mark.parametrize("name", ["e\x1b[31mvil.tn", "over\rwrite.tn", "bidi\u202e.tn",
                                  "bell\x07.tn"])
def test_control_characters_in_file_names_are_escaped_in_every_message(tmp_path, capsys,
                                                                        name):
    good = tmp_path / name
    good.write_text(CHECKED)
    bad = tmp_path / ("bad" + name)
    bad.write_text("dim N = 2\ny[i] = q[i]\n")
    for argv in (["check", good], ["check", bad], ["check", tmp_path / ("missing" + name)],
                 ["compile", bad], ["render", bad], ["cost", bad], ["verify", good]):
        code, out, err = run(argv, capsys)
        for text in (out, err):
            assert all(ch.isprintable() or ch in "\n\t" for ch in text), (argv, text)
        assert terminal(name) in out + err


def test_source_lines_in_errors_are_escaped_and_the_caret_still_points(tmp_path):
    source = "dim N = 2\ny[i] = \x1b[2Jq[i]\n"
    with pytest.raises(TnError) as info:
        tndsl.parse(source, "s.tn")
    text = info.value.render()
    assert "\x1b" not in text and r"\x1b[2J" in text
    line, caret = text.splitlines()[1:3]
    assert caret[line.index(r"\x1b")] == "^"  # under the escaped character


# ---- 6. bounded reads -------------------------------------------------------------------

@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def _no_hang(fn, seconds=20):
    """Run `fn` in a thread; fail (rather than hang the suite) if it blocks."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=_catch(fn)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked"
    return result["value"]


def _catch(fn):
    try:
        return fn()
    except Exception as e:  # returned for the test to inspect
        return e


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/null", "fifo", "dir"])
def test_sources_must_be_regular_files(tmp_path, fifo, capsys, target):
    path = {"fifo": fifo, "dir": tmp_path}.get(target, target)
    error = _no_hang(lambda: tndsl.load(path))
    assert isinstance(error, TnError) and "not a regular file" in str(error)
    code, out, err = _no_hang(lambda: run(["check", path], capsys))
    assert code == 1 and "not a regular file" in err


def test_a_read_stops_at_the_limit_plus_one_byte(tmp_path, monkeypatch):
    path = tmp_path / "big"
    path.write_bytes(b"x" * 10_000)
    read = []
    real = os.read
    monkeypatch.setattr(files.os, "read", lambda fd, n: read.append(n) or real(fd, n))
    with pytest.raises(TnError, match="larger than the limit of 1,000 bytes"):
        files.read_limited(path, 1000)
    assert sum(read) == 1001
    assert files.read_limited(path, 10_000) == b"x" * 10_000  # at the limit: read whole


def test_an_oversized_one_line_source_is_refused_without_echoing_it(tmp_path, capsys):
    path = tmp_path / "huge.tn"
    path.write_text("y" * 3_000_000)
    code, out, err = run(["check", path], capsys)
    assert code == 1 and "3,000,000 characters; the limit is 2,000,000" in err
    assert len(err) < 1000


def test_long_source_lines_are_cut_around_the_caret():
    source = "dim N = 2\ny[i] = " + " + ".join(["A[i]"] * 5000) + " + q[i]\n"
    with pytest.raises(TnError) as info:
        tndsl.parse(source + "param A[i: N]\n", "long.tn")
    for error in getattr(info.value, "errors", [info.value]):
        line, caret = error.render().splitlines()[1:3]
        assert len(line) < 200 and line.rstrip().endswith(("...", "q[i]"))
        assert line[caret.index("^"):].startswith("q[i]")


def _gpt2_folder(tmp_path, **changes):
    raw = tensors()
    raw.update(changes)
    save_file(raw, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({**GOOD, "model_type": "gpt2"}))
    return tmp_path


@pytest.mark.parametrize("which", ["config.json", "model.safetensors"])
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_configs_and_weights_must_be_regular_files(tmp_path, which, kind):
    folder = _gpt2_folder(tmp_path)
    (folder / which).unlink()
    if kind == "fifo":
        os.mkfifo(folder / which)
    else:
        os.symlink(kind, folder / which)
    for load in (lambda: load_hf(folder), lambda: load_hf_gpt2(folder)):
        error = _no_hang(load)
        assert isinstance(error, WeightsError) and "not a regular file" in str(error), error


def test_a_config_nested_100000_deep_is_a_weights_error(tmp_path):
    folder = _gpt2_folder(tmp_path)
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(WeightsError, match="nested too deeply"):
        load_hf(folder)
    (folder / "config.json").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(WeightsError, match="nested too deeply"):
        from_pretrained(folder)


@pytest.mark.parametrize("weight_map", [[], ["model.safetensors"], "x", 3, None, True,
                                        {"w": 3}, "missing"])
def test_a_sharded_index_whose_weight_map_is_not_an_object_is_a_weights_error(tmp_path,
                                                                             weight_map):
    index = {} if weight_map == "missing" else {"weight_map": weight_map}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match="`weight_map` must be an object"):
        read_checkpoint(tmp_path)


def test_a_sharded_index_that_is_not_an_object_or_json_is_a_weights_error(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    for text, message in (("[1, 2]", "must be an object"), ("{", "not valid JSON"),
                          ("[" * 100_000, "nested too deeply|not valid JSON")):
        index.write_text(text)
        with pytest.raises(WeightsError, match=message):
            read_checkpoint(tmp_path)


# ---- 7. arguments checked before any work -------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["compile", MLP, "-o", "{tmp}"], "cannot write {tmp}: it is a directory"),
    (["compile", MLP, "-o", "{tmp}/no/such/model.py"], "there is no folder {tmp}/no/such"),
    (["render", MLP, "-o", "{tmp}"], "unknown figure format"),
    (["render", MLP, "-o", "{tmp}/x.svg/"], "it is a directory"),
    (["render", MLP, "-o", "{tmp}/missing/x.svg"], "there is no folder"),
    (["paths", MLP, "y", "-o", "{tmp}"], "it is a directory"),
    (["paths", MLP, "y", "--render", "{tmp}/x.foo"], "unknown figure format `.foo`"),
    (["study", "induction", "-o", MLP], "is not a folder"),
    (["study", "induction", "-o", MLP + "/report"], "is not a folder"),
])
def test_unwritable_outputs_are_refused_before_any_work(tmp_path, capsys, argv, message):
    (tmp_path / "x.svg").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 1 and out == ""
    assert f"error: {message.replace('{tmp}', str(tmp_path))}" in err or \
        message.replace("{tmp}", str(tmp_path)) in err, err
    assert err.startswith("error: cannot write")


@pytest.mark.parametrize("command", ["compile", "paths", "render"])
def test_a_fifo_output_is_refused_rather_than_waited_on(tmp_path, capsys, command):
    fifo = tmp_path / "out.dot"
    os.mkfifo(fifo)
    argv = {"compile": ["compile", MLP, "-o", fifo], "render": ["render", MLP, "-o", fifo],
            "paths": ["paths", ATTN, "blocks.1.attn.scores", "--render", fifo]}[command]
    code, out, err = _no_hang(lambda: run(argv, capsys))
    assert code == 1 and f"error: cannot write {fifo}: it is a FIFO" in err


@pytest.mark.parametrize("command", ["compile", "paths", "render"])
def test_a_write_that_fails_is_cannot_write_with_exit_1(tmp_path, capsys, command):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux) to make a write fail")
    full = tmp_path / ("full.dot" if command == "render" else "full.py")
    os.symlink("/dev/full", full)
    argv = {"compile": ["compile", MLP, "-o", full], "render": ["render", MLP, "-o", full],
            "paths": ["paths", ATTN, "blocks.1.attn.scores", "-o", full]}[command]
    code, out, err = run(argv, capsys)
    assert code == 1 and "error: cannot write" in err and "No space left" in err, err


@pytest.mark.parametrize("argv, message", [
    (["render", MLP, "--dpi", "-5", "-o", "x.png"], "--dpi: must be at least 1, got -5"),
    (["render", MLP, "--dpi", "0", "-o", "x.png"], "--dpi: must be at least 1, got 0"),
    (["render", MLP, "--dpi", "2.5"], "--dpi: must be a whole number, got '2.5'"),
    (["render", MLP, "--depth", "-1"], "--depth: must be at least 0, got -1"),
    (["study", "induction", "--steps", "0"], "--steps: must be at least 1, got 0"),
    (["study", "induction", "--steps", "-5"], "--steps: must be at least 1, got -5"),
    (["study", "induction", "--seed", str(2**63)], "--seed: must be from 0 to"),
    (["study", "induction", "--seed", "9" * 500], "(500 digits)"),
    (["study", "induction", "--seed", "-1"], "--seed: must be from 0 to"),
    (["compile", MLP, "--ranks", "0"], "--ranks: must be from 1 to"),
    (["cost", MLP, "--ranks", "-2"], "--ranks: must be from 1 to"),
])
def test_numeric_arguments_are_checked_at_parse_time(tmp_path, capsys, monkeypatch, argv,
                                                     message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert info.value.code == 2 and message in err, err
    assert os.listdir(tmp_path) == []  # nothing written, no empty report folder


def test_the_dpi_bounds(tmp_path, capsys):
    """1 dpi is drawn; a dpi whose PNG would pass cairo's 32,767 px is refused at once,
    naming the dpi that fits (it ran 62 s before, for a 32766 x 32767 PNG)."""
    code, out, err = run(["render", MLP, "--dpi", "1", "-o", tmp_path / "x.png"], capsys)
    if "not installed" in err:
        pytest.skip("needs Graphviz")
    assert code == 0 and (tmp_path / "x.png").read_bytes().startswith(b"\x89PNG")
    code, out, err = _no_hang(lambda: run(["render", MLP, "--dpi", "100000", "-o",
                                           tmp_path / "y.png"], capsys))
    assert code == 1 and "past cairo's 32,767 px limit" in err and "dpi fits" in err
    assert not (tmp_path / "y.png").exists()
    figure = tndsl.load(MLP).render()
    for dpi in (-5, 0, 2.5, True):
        with pytest.raises(TnError, match="dpi must be a positive whole number"):
            figure.save(tmp_path / "z.png", dpi=dpi)


@pytest.mark.parametrize("context", [2.5, 0, -1, True, "8"])
def test_from_pretrained_context_must_be_a_positive_integer(tmp_path, context):
    folder = _gpt2_folder(tmp_path)
    with pytest.raises(ArgumentError, match="context must be a positive whole number"):
        from_pretrained(folder, context=context)
    with pytest.raises(ValueError):  # an ArgumentError is a ValueError too
        load_hf(folder, context=context)


def test_gpt2_context_is_at_most_its_learnt_positions(tmp_path):
    folder = _gpt2_folder(tmp_path)
    assert from_pretrained(folder, context=3).tndsl_program.sizes["Context"] == 3
    assert from_pretrained(folder, context=1).tndsl_program.sizes["Context"] == 1
    with pytest.raises(TnError, match="context = 4 is longer than the 3 positions"):
        from_pretrained(folder, context=4)


# ---- 8. weights validated ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.complex64])
def test_weights_must_be_floating_point(tmp_path, dtype):
    bad = tensors()["transformer.h.0.ln_1.weight"].to(dtype)
    folder = _gpt2_folder(tmp_path, **{"transformer.h.0.ln_1.weight": bad})
    with pytest.raises(WeightsError, match=rf"`blocks.0.ln1.w` are {dtype}; weights must be "
                                           "floating point"):
        from_pretrained(folder)


@pytest.mark.parametrize("value, counts", [(float("nan"), "1 NaN and 0 infinite"),
                                           (float("inf"), "0 NaN and 1 infinite"),
                                           (float("-inf"), "0 NaN and 1 infinite")])
def test_non_finite_weights_are_refused_unless_allowed(tmp_path, value, counts):
    weight = tensors()["transformer.h.1.mlp.c_fc.weight"].clone()
    weight[2, 5] = value
    folder = _gpt2_folder(tmp_path, **{"transformer.h.1.mlp.c_fc.weight": weight})
    with pytest.raises(WeightsError, match=rf"`blocks.1.mlp.W_in` hold {counts} values "
                                           r"\(the first at index \(2, 5\)\)"):
        from_pretrained(folder)
    module = from_pretrained(folder, allow_nonfinite=True)
    loaded = module.blocks[1].mlp.W_in if hasattr(module, "blocks") else None
    state = dict(module.named_parameters())
    assert torch.equal(state["blocks.1.mlp.W_in"][2, 5:6], torch.tensor([value])) or \
        value != value and bool(state["blocks.1.mlp.W_in"][2, 5].isnan())


def test_load_safetensors_checks_the_weights_too(tmp_path):
    program = tndsl.parse("dim N = 2\nparam A[i: N]\ny[i] = A[i]\n")
    module = program.module()
    save_file({"A": torch.tensor([1.0, float("nan")])}, str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsError, match="`A` hold 1 NaN"):
        load_safetensors(module, tmp_path / "w.safetensors")
    load_safetensors(module, tmp_path / "w.safetensors", allow_nonfinite=True)
    save_file({"A": torch.tensor([1, 2])}, str(tmp_path / "i.safetensors"))
    with pytest.raises(WeightsError, match="torch.int64; weights must be floating point"):
        load_safetensors(module, tmp_path / "i.safetensors")


@pytest.mark.parametrize("dtype", ["float32", torch.int64, 3])
def test_from_pretrained_dtype_must_be_a_floating_dtype(tmp_path, dtype):
    with pytest.raises(ArgumentError, match="dtype must be a floating torch.dtype"):
        from_pretrained(_gpt2_folder(tmp_path), dtype)


# ---- the CLI end to end: no traceback, no exit 3 -----------------------------------------

def test_hostile_command_lines_exit_cleanly(tmp_path, fifo):
    """A few of the above through a real process (the entry point, stderr and exit code
    as a user sees them)."""
    for argv, code in ((["check", "/dev/zero"], 1), (["check", str(fifo)], 1),
                       (["render", MLP, "--dpi", "-5", "-o", str(tmp_path / "x.png")], 2),
                       (["compile", MLP, "-o", str(tmp_path)], 1)):
        result = subprocess.run([sys.executable, "-m", "tndsl", *argv], capture_output=True,
                                text=True, timeout=60, cwd=ROOT)
        assert result.returncode == code, (argv, result.stderr)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr


@pytest.mark.parametrize("depth", [-1, 1.5, True, "2"])
def test_render_depth_must_be_a_whole_number_at_least_0(depth):
    program = tndsl.load(MLP)
    with pytest.raises(ArgumentError, match="depth must be a whole number"):
        program.render(depth=depth)
    assert program.render(depth=0).source == program.render().source


@pytest.mark.parametrize("argv", [
    ["render", MLP, "z\nmlp.tn: ok"], ["cost", MLP, "z\x1b[2J"], ["compile", MLP, "--output",
                                                                 "z\rx"],
    ["compile", MLP, "--vary", "B\n"], ["compile", MLP, "--shard", "H\x00"],
    ["check", MLP, "--dim", "B\n=3"], ["paths", ATTN, "logits\u2028x"],
    ["paths", ATTN, "logits", "--through", "blocks.0\n"]])
def test_names_on_the_command_line_must_be_printable(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert info.value.code == 2 and "holds a control character" in err, err
    assert out == "" and all(ch.isprintable() or ch == "\n" for ch in err)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].endswith("names are printable")


@pytest.mark.parametrize("field, value", [("steps", 0), ("steps", -5), ("seed", 2**63),
                                          ("seed", -1), ("batch", 2.5), ("lr", float("nan")),
                                          ("heads", True)])
def test_the_study_config_is_checked_before_any_work(tmp_path, field, value):
    from tndsl.interp.induction import Config, run
    with pytest.raises(ArgumentError, match=f"study config: {field} must be"):
        run(tmp_path / "out", Config(**{field: value}), stream=None)
    assert not (tmp_path / "out").exists()
