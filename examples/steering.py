"""Text in, text out, and a steered feature: the workflow of docs/tutorial.md §13 on a
random checkpoint (no download), end to end.

    python examples/steering.py [OUT_DIR]

1. Saves a small random Llama checkpoint with a word-level tokenizer (the `tokenizers`
   library) and a random JumpReLU SAE on `blocks.1.hook_resid_post` in SAELens's folder
   layout, then loads both offline.
2. Generates from text (greedy), with the key/value cache derived from the diagram.
3. Finds the feature most active on the prompt, clamps it to 10x its maximum during
   generation, and plots its activation over the tokens, plain and steered
   (OUT_DIR/sae-steering.png; the tutorial's figure).
Needs `transformers` and `matplotlib` (the test extra).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

import tndsl

WORDS = ("<unk> <s> </s> the golden gate bridge is a suspension in san francisco bay "
         "fog red city of and over water tower cable cars hills").split()


def make_checkpoint(folder: Path) -> None:
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    config = transformers.LlamaConfig(
        vocab_size=len(WORDS), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3)
    model.save_pretrained(folder)
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)},
                                           unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = TemplateProcessing(single="<s> $A",
                                                  special_tokens=[("<s>", 1)])
    tokenizer.save(str(folder / "tokenizer.json"))


def make_sae(folder: Path, d_in: int = 64, d_sae: int = 256) -> None:
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    save_file({"W_enc": torch.randn(d_in, d_sae, generator=g) * 0.2,
               "W_dec": torch.randn(d_sae, d_in, generator=g) * 0.2,
               "b_enc": torch.zeros(d_sae), "b_dec": torch.zeros(d_in),
               "threshold": torch.rand(d_sae, generator=g)},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae,
        "hook_name": "blocks.1.hook_resid_post", "apply_b_dec_to_input": True}))


def main(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        make_checkpoint(Path(tmp) / "llama")
        make_sae(Path(tmp) / "sae")
        model = tndsl.from_pretrained(Path(tmp) / "llama", torch.float64)
        sae = tndsl.sae.load(Path(tmp) / "sae", torch.float64)

    prompt = "the golden gate bridge is"
    print(model.to_str_tokens(prompt))          # ['<s>', 'the', 'golden', ...]
    plain = model.generate(prompt, max_new_tokens=10)
    print("plain:  ", plain.text[0])

    tokens = model.to_tokens(prompt)
    acts = tndsl.sae.feature_activations(model, sae, tokens)   # [1, positions, 256]
    feature = int(acts[0].amax(dim=0).argmax())
    max_act = float(acts[0, :, feature].max())
    with tndsl.sae.steer(model, sae, feature=feature, value=10 * max_act) as steering:
        steered = model.generate(prompt, max_new_tokens=10,
                                 return_cache=[steering.features_name])
    print("steered:", steered.text[0])
    with tndsl.sae.attach(model, None, sae, keep_error=True) as attached:
        again = model.generate(prompt, max_new_tokens=10, return_cache=[attached.features_name])

    _plot(out / "sae-steering.png", model.to_str_tokens(again.tokens[0]),
          again.cache[attached.features_name][0, :, feature],
          steered.cache[steering.features_name][0, :, feature], feature)
    return {"plain": plain, "steered": steered, "feature": feature, "max_act": max_act}


def _plot(path: Path, words, plain, steered, feature) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 2.6))
    ax.plot(plain.numpy(), marker="o", label="plain generation")
    ax.plot(steered.numpy(), marker="s", label="steered (clamped to 10x max)")
    ax.set_xticks(range(len(words)))
    ax.set_xticklabels(words, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"feature {feature}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))
