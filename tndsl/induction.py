"""The induction-head study (Olsson et al.), from one command: `tndsl study induction`.

Compiles the two-layer attention-only transformer of `examples/attn_only_2l.tn`, trains
it on CPU to predict sequences of random tokens that repeat with a random period (so no
position can stand in for the pattern), then reports per head the previous-token,
induction and copying scores, the K-composition scores against a random baseline, the
mean contribution of each QK-expansion term on the induction stripe (computed through
the expanded network the `.tn` file states), and proves that expansion. Seeded.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import tndsl
from tndsl import circuits
from tndsl.hooks import run_with_cache
from tndsl.verify import prove_all

MODEL_FILE = Path(__file__).resolve().parent.parent / "examples" / "attn_only_2l.tn"
TERMS = {"no": "no_comp", "K": "k_comp", "Q": "q_comp", "K&Q": "kq_comp"}


@dataclass(frozen=True)
class Config:
    # Sizes for the model file's dims: a small vocab makes the task learnable in seconds.
    context: int = 32
    vocab: int = 32
    model: int = 64
    heads: int = 4
    steps: int = 2500
    batch: int = 64
    lr: float = 3e-3
    init_std: float = 0.1
    min_period: int = 4
    eval_sequences: int = 256
    seed: int = 0
    model_file: str = str(MODEL_FILE)


def _progress(step: int, total: int, loss: float, start: float, stream) -> None:
    width = 30
    done = int(width * step / total)
    line = (f"  training [{'#' * done}{'.' * (width - done)}] {step}/{total} "
            f"loss {loss:.3f} {time.perf_counter() - start:.0f}s")
    if getattr(stream, "isatty", lambda: False)():
        stream.write("\r" + line + ("\n" if step == total else ""))
    else:
        stream.write(line + "\n")
    stream.flush()


def repeated_batch(n: int, context: int, vocab: int, generator, *, period: int | None = None,
                   min_period: int = 4):
    """Random tokens repeating with a random period in [min_period, context // 2] (or the
    given one); returns (tokens [n, context], periods [n])."""
    if period is None:
        periods = torch.randint(min_period, context // 2 + 1, (n,), generator=generator)
    else:
        periods = torch.full((n,), period)
    rows = []
    for p in periods.tolist():
        base = torch.randint(0, vocab, (p,), generator=generator)
        rows.append(base.repeat(context // p + 1)[:context])
    return torch.stack(rows), periods


def run(out: str | Path, config: Config = Config(), *, stream=sys.stderr) -> dict:
    """Train, measure, prove and write report.md, report.json and plots into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    program = tndsl.load(config.model_file, dims={"Context": config.context,
                                                  "Vocab": config.vocab,
                                                  "Model": config.model,
                                                  "Heads": config.heads})
    sizes = program.sizes
    context, vocab, heads = sizes["Context"], sizes["Vocab"], sizes["Heads"]

    # ---- train -------------------------------------------------------------------------
    model = program.module(["logits"])
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, config.init_std, generator=generator)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    losses = []
    every = 25 if getattr(stream, "isatty", lambda: False)() else max(1, config.steps // 10)
    train_start = time.perf_counter()
    for step in range(1, config.steps + 1):
        tokens, _ = repeated_batch(config.batch, context, vocab, generator,
                                   min_period=config.min_period)
        logits = model(tokens)[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab),
                                                 tokens[:, 1:].reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if stream is not None and (step % every == 0 or step == config.steps):
            _progress(step, config.steps, loss.item(), train_start, stream)
    train_seconds = time.perf_counter() - train_start

    # ---- attention scores on sequences repeated exactly twice ----------------------------
    half = context // 2
    eval_tokens, _ = repeated_batch(config.eval_sequences, context, vocab, generator,
                                    period=half)
    names = ["blocks.0.attn.pattern", "blocks.1.attn.pattern"]
    with torch.no_grad():
        _, cache = run_with_cache(model, eval_tokens, names=names)
    positions = torch.arange(1, context)
    stripe = torch.arange(half, context)
    scores = {}
    for layer in (0, 1):
        pattern = cache[f"blocks.{layer}.attn.pattern"]          # [batch, h, p, s]
        scores[layer] = {
            "previous_token": pattern[:, :, positions, positions - 1].mean(dim=(0, 2)).tolist(),
            "induction": pattern[:, :, stripe, stripe - half + 1].mean(dim=(0, 2)).tolist(),
        }

    # ---- circuits: copying and composition (float64, never materialising vocab²) ---------
    w = {k: v.double() for k, v in circuits.named_weights(model).items()}
    for layer in (0, 1):
        b = f"blocks.{layer}.attn."
        scores[layer]["copying"] = [circuits.copying_score(circuits.full_ov_circuit(
            w["embed.W_E"], w[b + "W_V"], w[b + "W_O"], w["unembed.W_U"], h))
            for h in range(heads)]
    layer0 = [w[f"blocks.0.attn.W_{k}"] for k in "QKVO"]
    layer1 = [w[f"blocks.1.attn.W_{k}"] for k in "QKVO"]
    composition = {kind: circuits.composition_scores(*layer0, *layer1, kind).tolist()
                   for kind in ("k", "q", "v")}
    baseline = circuits.composition_baseline(sizes["Model"], sizes["Head"], seed=config.seed)
    previous_head = max(range(heads), key=lambda h: scores[0]["previous_token"][h])
    induction_head = max(range(heads), key=lambda h: scores[1]["induction"][h])

    # ---- the QK expansion, through the network the .tn file writes out -------------------
    expansion = program.module(["blocks.1.attn.scores", *TERMS.values()]).double()
    with torch.no_grad():
        for name, param in expansion.named_parameters():
            param.copy_(w[name])
        values = expansion(eval_tokens[:32])
    actual = values["blocks.1.attn.scores"]
    total = sum(values[name] for name in TERMS.values())
    max_error = float((total - actual).abs().max())
    h = induction_head
    terms = {label: float(values[name][:, h, stripe, stripe - half + 1].mean())
             for label, name in TERMS.items()}
    actual_stripe = float(actual[:, h, stripe, stripe - half + 1].mean())
    proof_start = time.perf_counter()
    (proof,) = [r for r in prove_all(program) if r.label == "qk_expansion"]
    proof_seconds = time.perf_counter() - proof_start

    report = {
        "config": asdict(config),
        "sizes": {k: v for k, v in sizes.items() if v is not None},
        "training": {"steps": config.steps, "seconds": train_seconds,
                     "final_loss": sum(losses[-50:]) / len(losses[-50:]),
                     "loss_curve": losses[:: max(1, len(losses) // 200)]},
        "heads": {f"layer{layer}": scores[layer] for layer in (0, 1)},
        "previous_token_head": [0, previous_head],
        "induction_head": [1, induction_head],
        "composition": {**composition, "baseline": baseline},
        "qk_expansion": {"head": [1, induction_head], "terms_on_induction_stripe": terms,
                         "actual_on_induction_stripe": actual_stripe,
                         "largest_error": max_error,
                         "proof": {"status": proof.status, "tier": proof.tier,
                                   "detail": proof.detail, "seconds": proof_seconds}},
    }
    plots = _plots(out, report, cache, eval_tokens, program)
    report["plots"] = plots
    report["total_seconds"] = time.perf_counter() - started
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    return report


def _plots(out: Path, report: dict, cache, tokens, program) -> list[str]:
    written = []
    try:
        figure = program.render("blocks.1.attn.scores", depth=1)
        figure.save(out / "qk_expansion.png", dpi=110)
        written.append("qk_expansion.png")
    except tndsl.TnError as e:  # no Graphviz: the report says so
        report["plots_note"] = f"QK expansion figure not drawn: {e.message}"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        report["plots_note"] = ("matplotlib is not installed (pip install 'tndsl[plots]'); "
                                "no plots of patterns, composition or loss")
        return written
    p_head = report["previous_token_head"][1]
    i_head = report["induction_head"][1]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, (layer, head, title) in zip(axes, [(0, p_head, "previous-token head"),
                                               (1, i_head, "induction head")]):
        pattern = cache[f"blocks.{layer}.attn.pattern"][0, head].numpy()
        ax.imshow(pattern, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"{title}: blocks.{layer}.attn, head {head}")
        ax.set_xlabel("key position s")
        ax.set_ylabel("query position p")
    fig.suptitle("attention on a sequence of random tokens repeated twice")
    fig.tight_layout()
    fig.savefig(out / "attention_patterns.png", dpi=110)
    plt.close(fig)
    written.append("attention_patterns.png")

    k = torch.tensor(report["composition"]["k"])
    fig, ax = plt.subplots(figsize=(4.8, 4))
    image = ax.imshow(k.numpy(), cmap="Reds", vmin=0)
    ax.set_xlabel("layer-1 head")
    ax.set_ylabel("layer-0 head")
    ax.set_title(f"K-composition (random baseline {report['composition']['baseline']:.3f})")
    for (i, j), value in zip(torch.cartesian_prod(torch.arange(k.shape[0]),
                                                  torch.arange(k.shape[1])).tolist(),
                             k.flatten().tolist()):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image)
    fig.tight_layout()
    fig.savefig(out / "k_composition.png", dpi=110)
    plt.close(fig)
    written.append("k_composition.png")

    fig, ax = plt.subplots(figsize=(6, 3.2))
    curve = report["training"]["loss_curve"]
    step = max(1, report["training"]["steps"] // len(curve))
    ax.plot([i * step for i in range(len(curve))], curve)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)
    written.append("loss.png")
    return written


def _markdown(r: dict) -> str:
    heads = len(r["heads"]["layer0"]["induction"])
    rows = []
    for layer in (0, 1):
        s = r["heads"][f"layer{layer}"]
        for h in range(heads):
            rows.append(f"| blocks.{layer}.attn | {h} | {s['previous_token'][h]:.3f} | "
                        f"{s['induction'][h]:.3f} | {s['copying'][h]:.3f} |")
    k = r["composition"]["k"]
    comp = ["| layer-0 head \\ layer-1 head | " + " | ".join(str(j) for j in range(len(k[0])))
            + " |", "|" + " --- |" * (len(k[0]) + 1)]
    for i, row in enumerate(k):
        comp.append(f"| {i} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    q = r["qk_expansion"]
    terms = "\n".join(f"| {label} composition | {value:+.4f} |"
                      for label, value in q["terms_on_induction_stripe"].items())
    plots = "\n".join(f"![{name}]({name})" for name in r.get("plots", []))
    note = f"\n{r['plots_note']}\n" if r.get("plots_note") else ""
    p_layer, p_head = r["previous_token_head"]
    i_layer, i_head = r["induction_head"]
    return f"""# Induction heads in a two-layer attention-only transformer

Model: `{Path(r['config']['model_file']).name}`, sizes {', '.join(f'{k} = {v}' for k, v in r['sizes'].items())}.
Trained {r['training']['steps']} steps (batch {r['config']['batch']}, Adam, lr {r['config']['lr']})
on random tokens repeating with a random period, in {r['training']['seconds']:.1f} s; final loss
{r['training']['final_loss']:.3f}. Seed {r['config']['seed']}. Whole study: {r['total_seconds']:.1f} s.

## Heads

Scores on {r['config']['eval_sequences']} sequences of random tokens repeated exactly twice:
previous-token = mean attention from p to p − 1; induction = mean attention, in the second
half, to the token after the previous occurrence of the current token; copying = Σλ / Σ|λ|
over the eigenvalues of the full OV circuit W_E W_V W_O W_U.

| block | head | previous-token | induction | copying |
| --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Previous-token head: blocks.{p_layer}.attn head {p_head}. Induction head: blocks.{i_layer}.attn head {i_head}.

## K-composition

‖W_OV⁰ W_QK¹ᵀ‖_F / (‖W_OV⁰‖_F ‖W_QK¹‖_F) for each pair; random matrices of the same shapes
score {r['composition']['baseline']:.3f} on average.

{chr(10).join(comp)}

## The QK expansion on the induction stripe

The layer-1 score is the sum of four terms (`check qk_expansion` in the model file:
**{q['proof']['status']}** by the {q['proof']['tier']} tier in {q['proof']['seconds']:.3f} s,
{q['proof']['detail']}). Mean of each term over the induction stripe of head {q['head'][1]}:

| term | mean score |
| --- | --- |
{terms}
| sum | {sum(q['terms_on_induction_stripe'].values()):+.4f} |
| actual score | {q['actual_on_induction_stripe']:+.4f} |

Largest difference between the sum of the four terms and the actual scores, over every
entry (float64): {q['largest_error']:.2e}.

## Plots
{note}
{plots}
"""
