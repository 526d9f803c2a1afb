"""The eval loss split by ``_category``, computed in the evaluation pass itself.

The validation view (``Prepared.view(..., categories=...)``) gives each item a
``token_category``: one category number a token. ``CategoryCollator`` lays those out like the
batch's labels (``label_category``, -1 on padding), the trainer takes them off the batch before
the forward and adds each labelled token's loss to its category's sum (``CategorySums``, on the
device, no host sync per batch). At the eval's ``log`` the sums become ``eval_by_category``:
category -> token-weighted mean loss over the held-out rows of that category.
"""

from __future__ import annotations

import torch

KEY = "eval_by_category"


class CategoryCollator:
    """TRL's collator, plus ``label_category`` when the examples carry ``token_category``."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):  # padding_free, pad_token_id, ...: what callers read off the inner one
        if name == "inner":  # not set yet (being unpickled in a dataloader worker): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, examples):
        if not examples or "token_category" not in examples[0]:
            return self.inner(examples)
        cats = [torch.as_tensor(e["token_category"], dtype=torch.long) for e in examples]
        out = self.inner([{k: v for k, v in e.items() if k != "token_category"} for e in examples])
        labels = out["labels"]
        rows = [torch.cat(cats)] if labels.shape[0] == 1 and len(cats) > 1 else cats
        laid = torch.full(labels.shape, -1, dtype=torch.long)
        for i, c in enumerate(rows):
            laid[i, : len(c)] = c
        out["label_category"] = laid
        return out


class CategorySums:
    """Loss sum and labelled-token count per category over one evaluation, kept on the device."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.loss: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def add(self, per_token: torch.Tensor, label_mask: torch.Tensor, label_category: torch.Tensor) -> None:
        """``per_token`` and ``label_mask`` as TRL's fused head gives them ([B, T-1]: token t+1's loss at t);
        ``label_category`` as the collator laid it out ([B, T])."""
        cats = label_category[:, 1:].to(per_token.device)
        keep = label_mask & (cats >= 0)
        idx = torch.where(keep, cats, 0).reshape(-1)
        n = len(self.names)
        if self.loss is None:
            self.loss = torch.zeros(n, dtype=torch.float64, device=per_token.device)
            self.count = torch.zeros(n, dtype=torch.float64, device=per_token.device)
        self.loss.scatter_add_(0, idx, torch.where(keep, per_token.detach(), 0).reshape(-1).double())
        self.count.scatter_add_(0, idx, keep.reshape(-1).double())

    def take(self, gather) -> dict[str, float]:
        """category -> mean loss (categories with no labelled token left out), summed over ranks
        through ``gather``; the sums start again from zero."""
        if self.loss is None:
            return {}
        n = len(self.names)
        loss = gather(self.loss.reshape(1, n)).reshape(-1, n).sum(0).tolist()
        count = gather(self.count.reshape(1, n)).reshape(-1, n).sum(0).tolist()
        self.loss = self.count = None
        return {name: s / c for name, s, c in zip(self.names, loss, count, strict=True) if c > 0}
