"""The optimizers a config may name, and what each needs from the machine.

The names are Axolotl's (which are transformers' ``optim`` names). The 8-bit and 4-bit ones
keep their state quantized: bitsandbytes' (``adamw_bnb_8bit``, ``paged_*``, ``lion_8bit``) and
torchao's (``adamw_torch_8bit``, ``adamw_torch_4bit``) run on CUDA GPUs only. ``needs`` says
what is missing on this machine, so ``check`` can name it and ``train`` refuses before loading
anything instead of failing inside the trainer with an ImportError.
"""

from __future__ import annotations

import importlib.util

BNB = ("bitsandbytes", "pip install bitsandbytes")
TORCHAO = ("torchao", "pip install torchao")

# name -> (library it needs or None, needs CUDA)
OPTIMIZERS: dict[str, tuple[tuple[str, str] | None, bool]] = {
    "adamw_torch": (None, False),
    "adamw_torch_fused": (None, False),  # falls back to adamw_torch on a CPU (same math)
    "adafactor": (None, False),
    "sgd": (None, False),
    "adamw_8bit": (BNB, True),
    "adamw_bnb_8bit": (BNB, True),
    "paged_adamw_8bit": (BNB, True),
    "paged_adamw_32bit": (BNB, True),
    "lion_8bit": (BNB, True),
    "paged_lion_8bit": (BNB, True),
    "lion_32bit": (BNB, True),
    "ademamix_8bit": (BNB, True),
    "adamw_torch_8bit": (TORCHAO, True),
    "adamw_torch_4bit": (TORCHAO, True),
}


def needs(name: str, cuda: bool | None = None) -> str | None:
    """What this machine lacks to run optimizer ``name`` (None: nothing)."""
    lib, wants_cuda = OPTIMIZERS[name]
    missing = []
    if lib and importlib.util.find_spec(lib[0]) is None:
        missing.append(f"the {lib[0]} package ({lib[1]})")
    if wants_cuda:
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        if not cuda:
            missing.append("a CUDA GPU (this machine has none)")
    if not missing:
        return None
    return f"optimizer `{name}` needs " + " and ".join(missing)
