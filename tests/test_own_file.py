"""Your own `.tn` file with a Hugging Face checkpoint (issue 26, point 3):
`from_pretrained(folder, tn=...)` reads the checkpoint through the family's table into
the user's file, with located errors for params missing or misshapen; `tndsl.load`
drops sizes for undeclared dims only when asked, and never takes None silently; and
`tndsl families` with the generated docs table."""
import subprocess
import sys

import pytest
import torch

import tndsl
from conftest import ROOT
from hf_models import build, float64_oracle, logits, save, tokens
from tndsl.models import WeightsError
from tndsl.models.listing import BEGIN, END, markdown

# A Llama written by hand, differently from examples/llama.tn: one block per layer, the
# attention in fewer equations, the scale as a coefficient, no Window or grouping dims
# beyond what it needs; the param paths are the family table's.
MY_LLAMA = """
dim Context
dim Vocab = 10
dim Model = 8
dim Heads = 2
dim KVHeads = 1
dim Head = 4
dim Hidden = 12
dim Layers = 1
const Theta = 10000
const Eps = 1e-5
input tokens[p: Context, v: onehot Vocab]
param embed.W_E[v: Vocab, m: Model]
param unembed.W_U[m: Model, v: Vocab]
fixed R[p: Context, e: Head, f: Head] = rotary(Theta)
fixed G[h: Heads, g: KVHeads] = grouping

block Norm(x[p: Context, m: Model]) -> [p: Context, m: Model] {
    param w[m: Model]
    return rmsnorm[m](x[p, m], Eps) * w[m]
}

block Layer(x[p: Context, m: Model]) -> [p: Context, m: Model] {
    param attn.W_Q[h: Heads, m: Model, e: Head]
    param attn.W_K[g: KVHeads, m: Model, e: Head]
    param attn.W_V[g: KVHeads, m: Model, e: Head]
    param attn.W_O[h: Heads, e: Head, m: Model]
    param mlp.W_gate[m: Model, f: Hidden]
    param mlp.W_in[m: Model, f: Hidden]
    param mlp.W_out[f: Hidden, m: Model]
    a[p, m] = Norm(x) as ln1
    q_raw[p, h, f] = a[p, m] * attn.W_Q[h, m, f]
    k_raw[p, g, f] = a[p, m] * attn.W_K[g, m, f]
    q[p, h, e] = R[p, e, f] * q_raw[p, h, f]
    k[p, g, e] = R[p, e, f] * k_raw[p, g, f]
    weights[h, p, s] = softmax[s](q[p, h, e] * G[h, g] * k[s, g, e] / sqrt(Head) where s <= p)
    mixed[p, m] = weights[h, p, s] * G[h, g] * a[s, n] * attn.W_V[g, n, e] * attn.W_O[h, e, m]
    y[p, m] = x[p, m] + mixed[p, m]
    b[p, m] = Norm(y) as ln2
    hidden[p, f] = silu(b[p, m] * mlp.W_gate[m, f]) * (b[p, n] * mlp.W_in[n, f])
    return y[p, m] + hidden[p, f] * mlp.W_out[f, m]
}

resid[p, m] = tokens[p, v] * embed.W_E[v, m]
for l in 0..Layers {
    resid[p, m] = Layer(resid) as blocks.{l}
}
logits[p, v] = Norm(resid) as ln_final * unembed.W_U[m, v]
"""


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    model_class, config = build("llama", num_hidden_layers=3, num_key_value_heads=2)
    hf = save(model_class, config, folder)
    return folder, config, float64_oracle(hf.to(torch.float64))


def _write(tmp_path, text, name="my_llama.tn"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_users_own_llama_equals_hugging_face(llama, tmp_path):
    folder, config, oracle = llama
    path = _write(tmp_path, MY_LLAMA)
    module = tndsl.from_pretrained(folder, torch.float64, tn=path)
    assert module.tndsl_program.network.source.name == str(path)
    assert module.tndsl_program.sizes["Layers"] == 3     # sized from config.json
    ids = tokens(config.vocab_size)
    with torch.no_grad():
        assert (module(ids) - logits(oracle, ids)).abs().max().item() < 1e-10


def test_a_param_the_checkpoint_does_not_fill_is_located(llama, tmp_path):
    folder, _, _ = llama
    text = MY_LLAMA.replace("    param mlp.W_out[f: Hidden, m: Model]\n",
                            "    param mlp.W_out[f: Hidden, m: Model]\n"
                            "    param mlp.b_out[m: Model]\n").replace(
        "hidden[p, f] * mlp.W_out[f, m]",
        "hidden[p, f] * mlp.W_out[f, m] + mlp.b_out[m] * ones[p]")
    path = _write(tmp_path, text)
    with pytest.raises(WeightsError) as info:
        tndsl.from_pretrained(folder, tn=path)
    message = str(info.value)
    line = text.splitlines().index("    param mlp.b_out[m: Model]") + 1
    assert f"my_llama.tn:{line}:5: error: param `blocks.0.mlp.b_out`" in message
    assert "is not filled by any tensor of a llama checkpoint" in message
    assert "^" in message       # the caret under the declaration


def test_a_param_the_file_lacks_is_named_with_its_tensor(llama, tmp_path):
    folder, _, _ = llama
    text = MY_LLAMA.replace("logits[p, v] = Norm(resid) as ln_final * unembed.W_U[m, v]",
                            "logits[p, v] = resid[p, m] * unembed.W_U[m, v]")
    with pytest.raises(WeightsError) as info:
        tndsl.from_pretrained(folder, tn=_write(tmp_path, text))
    assert "declares no param `ln_final.w`, which the llama table fills from the " \
           "checkpoint's model.norm.weight" in str(info.value)


def test_a_misshapen_param_is_located(llama, tmp_path):
    folder, _, _ = llama
    # W_O's legs in the wrong order: [m, h, e] where the table reads [h, e, m].
    text = MY_LLAMA.replace("param attn.W_O[h: Heads, e: Head, m: Model]",
                            "param attn.W_O[m: Model, h: Heads, e: Head]").replace(
        "attn.W_O[h, e, m]", "attn.W_O[m, h, e]")
    path = _write(tmp_path, text)
    with pytest.raises(WeightsError) as info:
        tndsl.from_pretrained(folder, tn=path)
    message = str(info.value)
    line = text.splitlines().index("    param attn.W_O[m: Model, h: Heads, e: Head]") + 1
    assert f"my_llama.tn:{line}:5: error: param `blocks.0.attn.W_O` [m: Model, h: Heads, " \
           f"e: Head] = [64, 4, 16] does not fit the checkpoint's " \
           f"model.layers.0.self_attn.o_proj.weight of shape [64, 64]" in message
    assert "layout `heads_out`" in message


def test_a_setting_the_users_file_cannot_take_is_refused(tmp_path):
    folder = tmp_path / "ckpt"
    model_class, config = build("llama", hidden_act="gelu")
    save(model_class, config, folder)
    text = MY_LLAMA.replace("silu(b[p, m]", "silu( b[p, m]")
    with pytest.raises(WeightsError, match=r'hidden_act = "gelu" changes the llama model, '
                                           r"and .*my_llama.tn does not contain"):
        tndsl.from_pretrained(folder, tn=_write(tmp_path, text))


EXTRA = """
dim N = 3
param A[i: N, j: N]
out[i] = A[i, j] * ones[j]
"""


def test_load_drops_undeclared_dims_only_when_asked(tmp_path):
    path = _write(tmp_path, EXTRA, "small.tn")
    with pytest.raises(tndsl.TnError, match="size given for unknown dim `Model`"):
        tndsl.load(path, dims={"N": 4, "Model": 8})
    program = tndsl.load(path, dims={"N": 4, "Model": 8}, extra_dims="ignore")
    assert program.sizes == {"N": 4}
    with pytest.raises(ValueError, match="extra_dims must be 'error' or 'ignore'"):
        tndsl.load(path, extra_dims="drop")


def test_a_size_of_none_is_never_taken_silently(tmp_path):
    path = _write(tmp_path, EXTRA, "small.tn")
    llama = tndsl.load(ROOT / "examples" / "llama.tn")
    assert llama.sizes["Context"] is None
    for extra in ("error", "ignore"):
        with pytest.raises(tndsl.TnError) as info:
            tndsl.load(path, dims={"N": None}, extra_dims=extra)
        assert "must be a positive integer, not None" in str(info.value)
        assert "leave `N` out of the sizes" in str(info.value)
    # One program's sizes passed to another: the None of an undeclared dim is dropped.
    assert tndsl.load(path, dims=dict(llama.sizes), extra_dims="ignore").sizes == {"N": 3}


def test_import_tndsl_reaches_weights_hooks_and_families():
    code = ("import tndsl; print(tndsl.weights.load_hf.__name__, "
            "tndsl.hooks.run_with_cache.__name__, len(tndsl.families.tables.FAMILIES))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.split()
    assert out[:2] == ["load_hf", "run_with_cache"] and int(out[2]) >= 12


def test_the_families_docs_table_is_the_generated_one():
    text = (ROOT / "docs" / "families.md").read_text()
    assert text[text.index(BEGIN):text.index(END) + len(END)] == markdown(), \
        "regenerate: tndsl families --markdown, between the markers of docs/families.md"


def test_the_families_command_lists_every_family():
    from tndsl.cli import main
    from tndsl.models.tables import FAMILIES
    result = subprocess.run([sys.executable, "-m", "tndsl", "families"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    for family in FAMILIES:
        assert f"examples/{family.example}" in result.stdout
        assert all(c in result.stdout for c in family.hf_classes)
    one = subprocess.run([sys.executable, "-m", "tndsl", "families", "gpt_neox"],
                         capture_output=True, text=True, cwd=ROOT)
    assert "use_parallel_residual" in one.stdout and "true (default), false" in one.stdout
    assert main(["families", "t5"]) == 1
