"""The families that need issue 26's language constructs, against Hugging Face
transformers, from random checkpoints saved to disk and read by `tndsl.from_pretrained`:
Gemma 2 (soft-capping, alternating local and global layers through `if`), Gemma 3 text
(per-head q/k norms, a rotary base per layer type), GPT-J (interleaved partial rotary),
BLOOM (ALiBi), Mixtral and Qwen2-MoE (top-k routing over an `Experts` leg).

Each equals HF's logits on a batch of two sequences shorter than the context, within
1e-4 in float32 and 1e-10 in float64. For float64, HF's own float32 steps are replaced
by the same formulas in float64 (`hf_models.float64_oracle`, shared with
tests/test_families.py and tests/test_config_keys.py): the RMS norms and rotary tables,
eager attention's float32 softmax (Gemma 2/3, whose soft-capping only eager attention
implements), BLOOM's float32 softmax, GPT-J's float32 sin/cos table and the MoE
routers' float32 softmax. Nothing else of HF is touched. The cases are hf_models.SPECS's.
"""
import pytest
import torch
import transformers

import tndsl
from tndsl.models import WeightsError
from hf_models import (CASES, CONSTRUCT_FAMILIES, FAMILY_OF, SMALL, float64_oracle, save,
                       tokens)

# The cases of these families (hf_models.SPECS: soft-capped and uncapped Gemma 2,
# renormalised and plain Qwen2-MoE, ...); the other families' are test_families'.
CONSTRUCT_CASES = sorted(case for case in CASES if FAMILY_OF[case] in CONSTRUCT_FAMILIES)


@pytest.mark.parametrize("case", CONSTRUCT_CASES)
def test_family_equals_hugging_face_in_float32_and_float64(case, tmp_path):
    model_class, config = CASES[case]()
    hf = save(model_class, config, tmp_path)
    ids = tokens(config.vocab_size)

    module = tndsl.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = hf(ids).logits
        actual = module(ids)
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    assert expected.abs().max() > 1  # random weights large enough to mean something
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)

    oracle = float64_oracle(hf.to(torch.float64))
    module64 = tndsl.from_pretrained(tmp_path, torch.float64)
    with torch.no_grad():
        expected = oracle(ids).logits
        actual = module64(ids)
    assert actual.dtype == torch.float64
    assert (actual - expected).abs().max().item() < 1e-10


def test_layer_types_that_are_not_periodic_are_refused(tmp_path):
    config = transformers.Gemma2Config(**{**SMALL, "num_hidden_layers": 3}, head_dim=16,
                                       num_key_value_heads=4,
                                       layer_types=["full_attention", "sliding_attention",
                                                    "sliding_attention"])
    save(transformers.Gemma2ForCausalLM, config, tmp_path)
    with pytest.raises(WeightsError, match="layer_types = .* is not periodic"):
        tndsl.from_pretrained(tmp_path)


def test_a_config_value_the_file_does_not_implement_is_refused(tmp_path):
    config = transformers.BloomConfig(vocab_size=97, hidden_size=64, n_layer=1, n_head=4,
                                      apply_residual_connection_post_layernorm=True,
                                      bos_token_id=0, eos_token_id=0)
    save(transformers.BloomForCausalLM, config, tmp_path)
    with pytest.raises(WeightsError, match="apply_residual_connection_post_layernorm"):
        tndsl.from_pretrained(tmp_path)
