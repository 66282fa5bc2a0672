"""Model families (Llama, Mistral, Qwen2, Gemma, Pythia, GPT-2) loaded from Hugging Face
checkpoints: `.tn` files in examples/, declarative tables here (docs/families.md)."""
from tndsl.families.loading import SUPPORTED, from_pretrained, load_hf

__all__ = ["SUPPORTED", "from_pretrained", "load_hf"]
