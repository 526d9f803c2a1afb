"""Per-layer ``torch.compile`` of the decoder: fuses the small ops between the matmuls.

Each decoder layer is compiled on its own (one graph reused by every layer), with dynamic
shapes because packed batches change length every step. The first steps pay the compile
time once; the run log says when compilation is on.
"""

from __future__ import annotations


def decoder_layers(model):
    """The ModuleList of transformer blocks of a (PEFT-wrapped) causal or vision-language LM."""
    import torch

    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = getattr(text, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if (
            isinstance(module, torch.nn.ModuleList)
            and name.endswith("layers")
            and len(module) == n
            and not any(p in name for p in ("visual", "vision"))
        ):
            return module
    return None


def compile_layers(model) -> int:
    layers = decoder_layers(model)
    if layers is None:
        return 0
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
