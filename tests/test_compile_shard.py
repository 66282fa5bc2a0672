"""`tndsl compile --shard`: the tensor-parallel plan as a `parallelize(mesh)` method of
the generated root class. Here, without processes: the emitted tables against the plan
pass, the file without --shard unchanged, determinism, single-process use never loading
torch.distributed.tensor, and the located errors. The method itself runs on 2 gloo
ranks in tests/test_distributed.py (logits against Hugging Face)."""
import ast
import os
import subprocess
import sys

import pytest

import tndsl
from tndsl.cli import main
from tndsl.passes.shard import shard_plan
from conftest import ROOT

GPT2 = ROOT / "examples" / "gpt2_small.tn"
LLAMA = ROOT / "examples" / "llama.tn"
LLAMA_DIMS = {"Layers": 2, "Heads": 4, "KVHeads": 2, "Model": 16, "Head": 4, "Hidden": 24,
              "Vocab": 30}


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tndsl", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def tables(source: str) -> dict:
    """The literal tables of the emitted method, read back with ast (not executed)."""
    tree = ast.parse(source)
    method = next(node for node in ast.walk(tree)
                  if isinstance(node, ast.FunctionDef) and node.name == "parallelize")
    found = {}
    for statement in method.body:
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Dict):
            found[statement.targets[0].id] = ast.literal_eval(statement.value)
    return found


def test_the_method_holds_the_plans_tables():
    program = tndsl.load(GPT2, dims={"Layers": 2})
    source = program.compile(shard="Heads,Hidden").source
    plan = shard_plan(program, ("Heads", "Hidden"), 2)
    found = tables(source)
    assert found["sharded"] == {p.name: p.axis for p in plan.params}
    assert len(found["sharded"]) == 20 and found["sharded"]["blocks.1.mlp.W_in"] == 1
    assert found["pins"] == plan.pins()
    # q[p, h, e] keeps its heads split (leg 1 of 3); the attention output is reduced
    assert found["pins"]["blocks.0.attn.q"] == (3, 1)
    assert found["pins"]["blocks.0.attn.out"] == (2, None)
    assert found["split"] == {"Heads": 12, "Hidden": 3072}
    # every other param of the program is replicated: it is in no table
    assert not set(found["sharded"]) & set(plan.replicated)


def test_llama_method_splits_the_kv_heads_with_the_query_heads():
    program = tndsl.load(LLAMA, dims=LLAMA_DIMS)
    found = tables(program.compile(shard=["Heads"]).source)
    assert found["split"] == {"Heads": 4, "KVHeads": 2}
    assert {k for k in found["sharded"] if k.startswith("blocks.0.")} == {
        "blocks.0.attn.W_Q", "blocks.0.attn.W_K", "blocks.0.attn.W_V", "blocks.0.attn.W_O"}
    assert found["pins"]["blocks.0.attn.k"] == (3, 1)  # k[p, g, e] split along g


def test_without_shard_the_file_is_unchanged_and_with_it_only_the_method_is_added():
    program = tndsl.load(GPT2, dims={"Layers": 1})
    plain = program.compile().source
    sharded = program.compile(shard="Heads").source
    # The model's classes end with the root's; the run-time helpers follow them.
    classes, banner, helpers = plain.partition("\n\n\n# ---- Run-time helpers")
    assert banner and sharded.endswith(banner + helpers)
    head = classes + "\n\n    def parallelize(self, mesh):\n"
    assert sharded.startswith(head)
    method = sharded[len(head):len(sharded) - len(banner + helpers)]
    # in between: the method's body, indented, at the end of the root class
    assert all(line.startswith("        ") or not line for line in method.splitlines())
    assert program.compile(shard=None).source == plain


def test_the_file_is_deterministic_and_standalone(tmp_path):
    outs = []
    for seed in ("0", "1"):
        out = tmp_path / f"model{seed}.py"
        result = cli("compile", GPT2, "--dim", "Layers=2", "--dim", "Vocab=64",
                     "--shard", "Heads,Hidden", "-o", out, env={"PYTHONHASHSEED": seed})
        assert result.returncode == 0, result.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    text = outs[0].decode()
    imports = [line.strip() for line in text.splitlines()
               if line.strip().startswith(("import ", "from "))]
    assert all(line.split()[1].split(".")[0] in ("math", "os", "time", "torch")
               for line in imports), imports
    # torch.distributed.tensor is imported inside the method only: single-process use
    # (build, forward, hooks) never loads it.
    model = str(tmp_path / "model0.py")
    check = ("import importlib.util, sys, torch\n"
             f"spec = importlib.util.spec_from_file_location('m', {model!r})\n"
             "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
             "model = m.Gpt2Small()\n"
             "model(torch.randint(0, 64, (2, 5)))\n"
             "print([k for k in sys.modules if k.startswith('torch.distributed.tensor')])\n")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_dim_that_cannot_be_sharded_is_the_same_located_error_as_cost(capsys):
    def run(*args):  # the CLI in this process: exit code, stdout, stderr
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    for dims in ("Model", "Heds", "Heads --ranks 5"):
        args = dims.split()
        compiled = run("compile", GPT2, "--dim", "Layers=1", "--shard", *args)
        planned = run("cost", GPT2, "--dim", "Layers=1", "--shard", *args)
        assert compiled[0] == planned[0] == 1
        assert compiled[1] == "" and "Traceback" not in compiled[2]
        assert compiled[2] == planned[2]
    assert "gpt2_small.tn:22:24: error:" in run("compile", GPT2, "--shard", "Model")[2]
    code, _, err = run("compile", LLAMA, "--shard", "Heads", "--ranks", "4", "--dim", "Heads=8",
                       "--dim", "KVHeads=2")
    assert code == 1
    assert "llama.tn:27:1: error: the grouping `group` cannot be split evenly" in err


def test_a_top_level_name_that_would_hide_the_method_is_a_located_error():
    program = tndsl.parse("dim N = 4\ninput x[i: N]\nparam parallelize.w[i: N]\n"
                          "y[i] = x[i] * parallelize.w[i]\n", "p.tn")
    assert "def parallelize" not in program.compile().source  # fine without --shard
    with pytest.raises(tndsl.TnError) as info:
        program.compile(shard="N")
    text = info.value.render()
    assert "param `parallelize.w` takes the name `parallelize`" in text and "p.tn:3:1" in text


def test_the_llama_method_matches_golden(golden):
    # The method alone (the rest of the file has its own goldens in test_compile.py).
    name = "examples/llama.tn"  # as the CLI shows it, wherever the checkout is
    program = tndsl.parse((ROOT / name).read_text(), name, {**LLAMA_DIMS, "Layers": 1})
    source = program.compile(shard="Heads,Hidden").source
    method = source[source.index("    def parallelize(self, mesh):"):]
    method = method[:method.index("\n\n\n")] + "\n"   # the helpers come after the classes
    golden(ROOT / "tests" / "golden" / "code" / "llama_parallelize.py.txt", method)


def test_names_reach_the_method_only_as_literals_and_comments():
    # The grammar admits only identifiers, but the emitter must not rely on it: names
    # from a plan go through python_string and python_comment. Hostile names here
    # must come back as the dict keys they are, with nothing else executable.
    import dataclasses
    import textwrap
    from tndsl.codegen.shard import _method
    program = tndsl.load(LLAMA, dims={**LLAMA_DIMS, "Layers": 1})
    plan = shard_plan(program, ("Heads",), 2)
    hostile = "W'] = 0\nimport os  # \u2028\r\\"
    leg = dataclasses.replace(plan.params[0].leg, name="h\nimport sys", dim="Heads\u2029x")
    first = dataclasses.replace(plan.params[0], name=hostile, leg=leg,
                                uses=(("eq\nimport pty", "column"),))
    placements = {("p\n'" if k == "blocks.0.attn.q" else k): v
                  for k, v in plan.placements.items()}
    legs = {("p\n'" if k == "blocks.0.attn.q" else k): v for k, v in plan.legs.items()}
    plan = dataclasses.replace(plan, params=(first,) + plan.params[1:],
                               placements=placements, legs=legs)
    source = "\n".join(_method(plan))
    tree = ast.parse(textwrap.dedent(source))
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert [node.module for node in imports] == [
        "torch.distributed.tensor", "torch.distributed.tensor.experimental",
        "torch.distributed.tensor.parallel"]
    found = tables(textwrap.dedent(source))
    assert hostile in found["sharded"] and "p\n'" in found["pins"]
