"""The OOM retry's batch cutting (engine/train/guard/oom.py): a packed row is cut at the document
boundary nearest to equal token counts, a padded batch along its rows; the tokens are the same."""

from __future__ import annotations

import torch

from engine.train.guard.oom import split_batch


def _packed(lengths: list[int]) -> dict:
    total = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return {
        "input_ids": torch.arange(100, 100 + total).unsqueeze(0),
        "labels": torch.arange(200, 200 + total).unsqueeze(0),
        "position_ids": torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0),
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu.clone(),
        "max_length_q": max(lengths),
        "max_length_k": max(lengths),
    }


def test_a_packed_row_is_cut_at_the_document_boundary_nearest_the_middle():
    # documents of 3, 5, 2, 6 and 4 tokens: boundaries at 3, 8, 10, 16; the middle of 20 is 10
    batch = _packed([3, 5, 2, 6, 4])
    first, second = split_batch(batch, 2)
    assert first["input_ids"].tolist() == [list(range(100, 110))]
    assert second["input_ids"].tolist() == [list(range(110, 120))]
    assert second["labels"].tolist() == [list(range(210, 220))]
    assert first["cu_seq_lens_q"].tolist() == [0, 3, 8, 10]
    assert second["cu_seq_lens_q"].tolist() == [0, 6, 10]
    assert second["cu_seq_lens_k"].tolist() == [0, 6, 10]
    assert (first["max_length_q"], second["max_length_q"]) == (5, 6)
    assert second["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3]]


def test_four_pieces_keep_every_document_whole_and_in_order():
    lengths = [4, 4, 4, 4, 4, 4, 4, 4]
    pieces = split_batch(_packed(lengths), 4)
    assert [p["cu_seq_lens_q"].tolist() for p in pieces] == [[0, 4, 8]] * 4
    tokens = torch.cat([p["input_ids"] for p in pieces], dim=1)
    assert tokens.tolist() == [list(range(100, 132))]


def test_a_padded_batch_is_cut_along_its_rows():
    batch = {
        "input_ids": torch.arange(12).reshape(4, 3),
        "attention_mask": torch.ones(4, 3, dtype=torch.long),
        "num_items_in_batch": 7,  # not per row: handed to every piece
    }
    a, b = split_batch(batch, 2)
    assert a["input_ids"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert b["input_ids"].tolist() == [[6, 7, 8], [9, 10, 11]]
    assert b["attention_mask"].shape == (2, 3) and b["num_items_in_batch"] == 7


def test_too_few_documents_or_rows_cannot_be_cut():
    assert split_batch(_packed([5, 5]), 4) is None
    assert split_batch({"input_ids": torch.zeros(1, 8, dtype=torch.long)}, 2) is None
