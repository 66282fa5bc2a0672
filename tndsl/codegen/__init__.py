"""Code generation: planned IR → a standalone, readable PyTorch file (`torch.py`), one
`nn.Module` class per block, and the module built from it (docs/compiling.md).

May import: the front end (tndsl.lang) and passes. Never torch at import time (`tndsl
compile` writes text), nor render, verify, program or anything above them."""
