"""Checkpoints as named PEFT adapters beside one base model in memory, loaded on demand and
unloaded least recently used first, leaving the model's module tree as it was.

A request's targets (``base``, ``live``, a checkpoint folder) become one adapter name per row;
generation routes each row through its own adapter (``engine.chat.routing``), so the active
(training) adapter is never switched.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine.chat.chat import BASE, LIVE
from engine.errors import UserError


def adapter_name(path: str) -> str:
    """A PEFT adapter name for a checkpoint folder; never a substring of another parameter name."""
    return "chat_" + hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:10]


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "load_adapter")


class Adapters:
    """Checkpoints loaded as extra adapters on one (PEFT) model, by folder.

    ``keep``: how many chat adapters stay loaded after a request (the least recently used
    go first). Training keeps none: the model is left with exactly the modules it had, so
    the trainer's checkpoints never carry a chat adapter.
    """

    def __init__(self, model, base_name: str, live: str | None = None, keep: int = 2) -> None:
        self.model = model
        self.base_name = base_name
        self.live = live  # the adapter being trained, when there is one
        self.keep = keep
        self.loaded: dict[str, str] = {}  # resolved folder -> adapter name
        self.notes: list[str] = []  # said once per request, then cleared

    def names(self, targets: list[str]) -> list[str] | None:
        """PEFT adapter names for the targets, loading checkpoints that are not loaded yet."""
        from engine.model.loading import check_adapter_fits

        if not is_peft(self.model) and all(t == BASE for t in targets):
            return None
        names = []
        for t in targets:
            if t == BASE:
                names.append("__base__")
            elif t == LIVE:
                if not self.live:
                    raise UserError("no training run is live here", "pick a checkpoint or base")
                names.append(self.live)
            else:
                key = str(Path(t).resolve())
                if key not in self.loaded:
                    check_adapter_fits(self.model, t, self.base_name)
                    self._note_other_base(t)
                    self._load(key)
                # Most recently used last.
                self.loaded[key] = self.loaded.pop(key)
                names.append(self.loaded[key])
        return names

    def _note_other_base(self, folder: str) -> None:
        from engine.model.loading import adapter_base

        trained_on = adapter_base(folder)

        def norm(name: str) -> str:
            return str(Path(name).resolve()) if Path(name).exists() else name

        if trained_on and self.base_name and norm(trained_on) != norm(self.base_name):
            self.notes.append(
                f"{Path(folder).name} was trained on {trained_on}; it fits, but this is {self.base_name}"
            )

    def _load(self, folder: str) -> None:
        name = adapter_name(folder)
        if not is_peft(self.model):
            from peft import PeftModel

            from engine.chat.generate import release

            release(self.model)  # the engine's caches of the plain model: a new model takes over
            self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=name)
            self.model.eval()
        else:
            try:
                self.model.load_adapter(folder, adapter_name=name, is_trainable=False, low_cpu_mem_usage=True)
            except BaseException:
                if name in self.model.peft_config:
                    self.model.delete_adapter(name)
                raise
        # Frozen and out of any optimizer: nothing about it may ever be trained.
        for n, p in self.model.named_parameters():
            if f".{name}." in n:
                p.requires_grad_(False)
        # New modules start in train mode: the checkpoint's LoRA dropout would be live.
        self.model.eval()
        self.loaded[folder] = name

    def trim(self, keep: int | None = None) -> None:
        """Unload the least recently used chat adapters down to ``keep``."""
        keep = self.keep if keep is None else keep
        deleted = False
        while len(self.loaded) > keep:
            folder = next(iter(self.loaded))
            name = self.loaded.pop(folder)
            if is_peft(self.model) and name in self.model.peft_config and len(self.model.peft_config) > 1:
                self.model.delete_adapter(name)
                deleted = True
            elif is_peft(self.model) and name in self.model.peft_config:
                self.loaded[folder] = name  # a PEFT model keeps at least one adapter
                break
        if deleted:
            _unwrap_empty_lora_layers(self.model)


def _unwrap_empty_lora_layers(model) -> None:
    """Put back the plain layers that only a deleted chat adapter had wrapped.

    A checkpoint may target more layers than the training adapter (say all linear layers
    against q_proj/v_proj). PEFT wraps those in LoRA layers and leaves the wrappers after
    ``delete_adapter``; unwrapping restores the model's exact module tree and names.
    """
    from peft.tuners.lora import LoraLayer

    empty = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and not any(
            len(getattr(module, attr)) for attr in module.adapter_layer_names
        ):
            empty.append(name)
    for name in empty:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, getattr(parent, child).get_base_layer())
