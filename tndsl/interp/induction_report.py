"""The induction study's report: plots (matplotlib, optional) and report.md."""
from __future__ import annotations

from pathlib import Path

import torch

import tndsl
from tndsl.interp.hooks import run_with_cache
from tndsl.interp.paths import expand_paths


def plots(out: Path, report: dict, program, model, tokens: torch.Tensor) -> list[str]:
    """Draws the report's figures into `out`; `tokens` is the evaluation set."""
    written = []
    try:
        expand_paths(program, "blocks.1.attn.scores").figure().save(out / "qk_expansion.png",
                                                                   dpi=80)
        written.append("qk_expansion.png")
    except tndsl.TnError as e:  # no Graphviz: the report says so
        report["plots_note"] = f"QK expansion figure not drawn: {e.message}"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        report["plots_note"] = ("matplotlib is not installed (pip install 'tndsl[plots]'); "
                                "no plots of patterns, composition, ablation or loss")
        return written
    tokens = tokens[:1]
    with torch.no_grad():
        _, cache = run_with_cache(model, tokens,
                                  names=["blocks.0.attn.pattern", "blocks.1.attn.pattern"])
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
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            ax.text(j, i, f"{float(k[i, j]):.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image)
    fig.tight_layout()
    fig.savefig(out / "k_composition.png", dpi=110)
    plt.close(fig)
    written.append("k_composition.png")

    a = report["ablation"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    labels = ["none"] + [f"0.{row['head']}" for row in a["heads"]]
    axes[0].bar(labels, [a["baseline"]["best_induction"]] + [r["best_induction"] for r in a["heads"]],
                color=["#888888"] + ["#c0392b" if r["head"] == p_head else "#2e86c1"
                                     for r in a["heads"]])
    axes[0].set_title("best induction score")
    axes[1].bar(labels, [a["baseline"]["repeated_loss"]] + [r["repeated_loss"] for r in a["heads"]],
                color=["#888888"] + ["#c0392b" if r["head"] == p_head else "#2e86c1"
                                     for r in a["heads"]])
    axes[1].set_title("loss on the repeated half")
    for ax in axes:
        ax.set_xlabel("layer-0 head zero-ablated")
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=110)
    plt.close(fig)
    written.append("ablation.png")

    training = report["training"]
    if "loss_curve" in training:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        curve = training["loss_curve"]
        step = max(1, training["steps"] // len(curve))
        ax.plot([i * step for i in range(len(curve))], curve)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        ax.set_title("training loss")
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=110)
        plt.close(fig)
        written.append("loss.png")
    return written


def _yes(holds: bool) -> str:
    return "**holds**" if holds else "**does not hold**"


def markdown(r: dict) -> str:
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
    terms = "\n".join(f"| {label} composition | `{q['paths'][label]}` | {value:+.4f} |"
                      for label, value in q["terms_on_induction_stripe"].items())
    per_head = ", ".join(f"head {i}: {v:+.3f}" for i, v in enumerate(q["k_term_by_layer0_head"]))
    plots = "\n".join(f"![{name}]({name})" for name in r.get("plots", []))
    note = f"\n{r['plots_note']}\n" if r.get("plots_note") else ""
    p_layer, p_head = r["previous_token_head"]
    i_layer, i_head = r["induction_head"]
    c = r["conditions"]
    a = r["ablation"]
    ablation = ["| layer-0 head ablated | best induction score | loss on the repeated half |",
                "| --- | --- | --- |",
                f"| none | {a['baseline']['best_induction']:.3f} | "
                f"{a['baseline']['repeated_loss']:.3f} |"]
    for row in a["heads"]:
        mark = " (previous-token head)" if row["head"] == p_head else ""
        ablation.append(f"| {row['head']}{mark} | {row['best_induction']:.3f} | "
                        f"{row['repeated_loss']:.3f} |")
    t = r["training"]
    if "loaded_from" in t:
        training = (f"Weights loaded from `{t['loaded_from']}` (trained {t['steps']} steps); "
                    "not retrained.")
    else:
        training = (f"Trained {t['steps']} steps (batch {r['config']['batch']}, Adam, lr "
                    f"{r['config']['lr']}) on random tokens repeating with a random period, in "
                    f"{t['seconds']:.1f} s; final loss {t['final_loss']:.3f}.")
    saved = r["saved"]
    tm = c["1.2"]
    return f"""# Induction heads in a two-layer attention-only transformer

Model: `{Path(r['config']['model_file']).name}`, sizes {', '.join(f'{k} = {v}' for k, v in r['sizes'].items())}.
{training} Seed {r['config']['seed']}. Whole study: {r['total_seconds']:.1f} s
({r['cpu_seconds']:.1f} s of CPU).
Saved next to this report: `{saved['weights']}` (safetensors) and `{saved['config']}` (the
exact config, with the model file's text); `tndsl study induction --weights {saved['weights']}`
re-runs the analysis without training.

## Heads

Scores on {r['config']['eval_sequences']} sequences of random tokens repeated exactly twice:
previous-token = mean attention from p to p − 1; induction = mean attention, in the second
half, to the token after the previous occurrence of the current token; copying = Σλ / Σ|λ|
over the eigenvalues of the full OV circuit W_E W_V W_O W_U.

| block | head | previous-token | induction | copying |
| --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Previous-token head: blocks.{p_layer}.attn head {p_head}. Induction head: blocks.{i_layer}.attn head {i_head}.

## The three conditions

- **(1.1) a previous-token head in layer 0**: head {p_head} puts {c['1.1']['score']:.3f} of its
  attention on the previous position (bar {c['1.1']['bar']}): {_yes(c['1.1']['holds'])}.
- **(1.2) token match for K-composition**: the token × token matrix
  W_E W_Q¹ (W_E W_OV⁰ W_K¹)ᵀ of layer-0 head {p_head} and layer-1 head {i_head} (query
  token against the token the previous-token head moves into the key position), read
  through its {r['sizes']['Head']}-dimensional bottleneck, favours its diagonal: z =
  {tm['z']:.2f} (mean of the diagonal minus the mean, in standard deviations), and
  {tm['top1']:.0%} of query tokens score highest against themselves; random weights of the
  same shapes give z = {tm['baseline_mean']:.2f} on average, {tm['baseline_max']:.2f} at most
  over {tm['baseline_samples']} draws: {_yes(tm['holds'])}.
- **(2.1) copying**: the induction head's full OV circuit has copying score
  {c['2.1']['score']:.3f} (bar {c['2.1']['bar']}): {_yes(c['2.1']['holds'])}.

## Causal check: ablating layer-0 heads

Each layer-0 head's output zero-ablated (`tndsl.interp.hooks.intervene` on
`blocks.0.attn.head_out`), on the same sequences:

{chr(10).join(ablation)}

## K-composition

‖W_OV⁰ W_QK¹ᵀ‖_F / (‖W_OV⁰‖_F ‖W_QK¹‖_F) for each pair; random matrices of the same shapes
score {r['composition']['baseline']:.3f} on average.

{chr(10).join(comp)}

## The QK expansion on the induction stripe

`tndsl paths` expands the layer-1 score into its four paths (the terms below, generated,
not written by hand), and `tndsl.interp.attribution` evaluates each on the model's cached
activations. Their sum equals the score (`check {q['check']}`:
**{q['proof']['status']}** by the {q['proof']['tier']} tier in {q['proof']['seconds']:.3f} s,
{q['proof']['detail']}). Mean of each term over the induction stripe of head {q['head'][1]}:

| term | path equation | mean score |
| --- | --- | --- |
{terms}
| sum | | {sum(q['terms_on_induction_stripe'].values()):+.4f} |
| actual score | | {q['actual_on_induction_stripe']:+.4f} |

The K-composition term by layer-0 head: {per_head}.
Largest difference between the sum of the four terms and the actual scores, over every
entry (float64): {q['largest_error']:.2e}.

## Plots
{note}
{plots}
"""
