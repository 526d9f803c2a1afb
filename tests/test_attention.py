"""Packed training with our attention path equals unpacked training, example by example."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from engine.model import attention

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def per_doc_losses(model, batch):
    logits = model(**batch).logits[0].float()
    cu = batch["cu_seq_lens_q"].tolist()
    ids = batch["input_ids"][0]
    out = []
    for s, e in zip(cu[:-1], cu[1:], strict=True):
        logp = torch.log_softmax(logits[s : e - 1], -1)
        out.append(-logp.gather(1, ids[s + 1 : e, None]).mean().item())
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_packed_equals_unpacked(tiny_model, arch, device):
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model(arch), attn_implementation=attention.register(), dtype=dtype
    ).to(device)
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(20, 900, (n,), generator=g).tolist() for n in (17, 40, 9, 31)]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [{"input_ids": d} for d in docs]
    )
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.no_grad():
        packed = per_doc_losses(model, batch)
        alone = []
        for d in docs:
            ids = torch.tensor([d], device=device)
            alone.append(model(input_ids=ids, labels=ids).loss.item())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert packed == pytest.approx(alone, abs=tol)


def test_plain_sdpa_mixes_documents(tiny_model):
    """The control: without document boundaries, packed losses differ from unpacked ones."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model("qwen3"), attn_implementation="sdpa")
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(20, 900, (n,), generator=g).tolist() for n in (17, 40, 9, 31)]
    flat = torch.tensor([sum(docs, [])])
    with torch.no_grad():
        logits = model(input_ids=flat).logits[0]
        ids, s, packed = flat[0], 0, []
        for d in docs:
            e = s + len(d)
            logp = torch.log_softmax(logits[s : e - 1], -1)
            packed.append(-logp.gather(1, ids[s + 1 : e, None]).mean().item())
            s = e
        alone = [model(input_ids=torch.tensor([d]), labels=torch.tensor([d])).loss.item() for d in docs]
    assert max(abs(a - b) for a, b in zip(packed[1:], alone[1:], strict=True)) > 1e-3


def test_our_packed_forward_skips_the_document_scan_other_attentions_keep(tiny_model, monkeypatch):
    """transformers scans packed position ids for a document mask (ending in a host sync); our
    attention takes the documents from ``cu_seq_lens`` and its flash-style mask ignores the scan's
    result, so it is skipped for it (test_packed_equals_unpacked: losses unchanged)."""
    from transformers import masking_utils

    attention.register()
    scans = []
    scan = masking_utils.find_packed_sequence_indices
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda p: scans.append(p) or scan(p))
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(20, 900, (n,), generator=g).tolist() for n in (17, 40, 9)]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [{"input_ids": d} for d in docs]
    )
    ours = AutoModelForCausalLM.from_pretrained(tiny_model("qwen3"), attn_implementation=attention.NAME)
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model("qwen3"), attn_implementation="sdpa")
    with torch.no_grad():
        ours(**batch, use_cache=False)  # as in training
        assert scans == []
        sdpa(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    assert len(scans) == 1 and torch.equal(scans[0], batch["position_ids"])
