"""Models: checkpoints in, compiled modules out. Hugging Face folders are read into a
family's `.tn` file (examples/) through declarative tables (docs/families.md).

May import: the front end (tndsl.lang), tndsl.program, codegen. Nothing imports it but
the CLI and the interpretability studies."""
from tndsl.models.loading import from_pretrained, load_hf
from tndsl.models.settings import SUPPORTED, ConfigWarning
from tndsl.models.tokenizer import Tokenizer, TokenizerError
from tndsl.models.weights import (WeightsError, contiguous_params, load_hf_gpt2,
                                  load_safetensors, load_state, save_safetensors)

__all__ = ["SUPPORTED", "ConfigWarning", "Tokenizer", "TokenizerError", "WeightsError", "contiguous_params", "from_pretrained", "load_hf",
           "load_hf_gpt2", "load_safetensors", "load_state", "save_safetensors"]
