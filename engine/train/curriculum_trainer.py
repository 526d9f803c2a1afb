"""The trainer side of a curriculum: the training rows, the sampler and the run log records.

TRL's preparation of the training set is replaced by the plan's rows (TRL still prepares the
eval set), and the Trainer's sampler by :class:`CurriculumSampler`; :class:`CurriculumCallback`
writes ``curriculum``, ``phase`` and ``mix`` records. The plan itself (no torch) is
engine/train/curriculum.py.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pyarrow.compute as pc
import torch
from transformers import TrainerCallback

from engine.data.packview import Subset
from engine.train.curriculum import Plan, Segment, rounded, rows_consumed
from engine.train.trainer import LeviathanTrainer


def plan_for(config, train_dataset) -> Plan:
    """The plan for a tokenized training set with ``input_ids`` and ``category`` columns."""
    names: list[str] = []
    index: dict[str, int] = {}
    cats, lens = [], []
    table = train_dataset.select_columns(["input_ids", "category"]).with_format("arrow")
    for batch in table.iter(batch_size=1 << 16):
        lens.append(pc.list_value_length(batch["input_ids"]).to_numpy(zero_copy_only=False))
        enc = pc.dictionary_encode(batch["category"]).combine_chunks()
        lut = np.array([index.setdefault(v, len(index)) for v in enc.dictionary.to_pylist()], np.int32)
        cats.append(lut[enc.indices.to_numpy(zero_copy_only=False)])
    names = sorted(index, key=index.get)
    return Plan(
        np.concatenate(cats) if cats else np.zeros(0, np.int32),
        names,
        np.concatenate(lens) if lens else np.zeros(0, np.int64),
        config.curriculum.phases,
        seed=config.seed,
        max_length=config.sequence_len,
        packing=config.sample_packing,
    )


def curriculum_setup(config, prepared, callback):
    """(trainer class, callbacks, training rows) that train the prepared data by the config's
    curriculum. ``prepared.train`` must still have its ``category`` column."""
    plan = plan_for(config, prepared.train)
    rows = CurriculumDataset(Subset(prepared.reader, prepared.index["train_rows"]), plan)
    callbacks = [callback, CurriculumCallback(plan, callback.log, config.curriculum.mix_every)]
    return functools.partial(CurriculumSFTTrainer, curriculum_plan=plan), callbacks, rows


class CurriculumDataset(torch.utils.data.Dataset):
    """The training rows by run position, over ``base`` (rows by number: ids and labels)."""

    def __init__(self, base, plan: Plan) -> None:
        self.base, self.plan, self.packing = base, plan, plan.packing

    def __len__(self) -> int:
        return self.plan.rows_per_epoch

    def __getitem__(self, position: int) -> dict:
        ids = self.plan.row(int(position)).tolist()
        cols = self.base[ids]
        if not self.packing:
            return {"input_ids": cols["input_ids"][0], "labels": cols["labels"][0]}
        input_ids, labels = [], []
        for a, b in zip(cols["input_ids"], cols["labels"], strict=True):
            input_ids += a
            labels += b
        return {"input_ids": input_ids, "labels": labels, "seq_lengths": [len(a) for a in cols["input_ids"]]}


class CurriculumSampler(torch.utils.data.Sampler):
    """Positions ``epoch * rows_per_epoch + i`` in order; the Trainer calls ``set_epoch``."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.plan.rows_per_epoch

    def __iter__(self):
        start = self.epoch * self.plan.rows_per_epoch
        return iter(range(start, start + self.plan.rows_per_epoch))


class CurriculumSFTTrainer(LeviathanTrainer):
    """Trains the plan's rows, in the plan's order."""

    def __init__(self, *args, curriculum_plan: Plan, **kwargs) -> None:
        self.curriculum_plan = curriculum_plan  # before TRL's __init__: it prepares the datasets
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, *args, **kwargs):
        name = kwargs.get("dataset_name", args[-1] if args else None)
        if name == "train":
            return CurriculumDataset(dataset, self.curriculum_plan)
        return super()._prepare_dataset(dataset, *args, **kwargs)

    def _get_train_sampler(self, *args, **kwargs):
        return CurriculumSampler(self.curriculum_plan)


class CurriculumCallback(TrainerCallback):
    """Run log records: ``curriculum`` (the plan), ``phase`` changes, ``mix`` seen so far."""

    def __init__(self, plan: Plan, log, mix_every: int) -> None:
        self.plan, self.log, self.mix_every = plan, log, mix_every
        self.segment: Segment | None = None

    def _rows(self, args, state, step: int | None = None) -> int:
        return rows_consumed(
            self.plan,
            state.global_step if step is None else step,
            args.per_device_train_batch_size,
            args.gradient_accumulation_steps,
            args.world_size,
        )

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self._emit_plan(state, self._rows(args, state, state.max_steps))
        self.segment = None
        self._check(args, state, resumed=state.global_step > 0)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._check(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._mix(args, state)

    def _check(self, args, state, resumed: bool = False) -> None:
        plan = self.plan
        rows = self._rows(args, state)
        seg = plan.segment_at(rows)
        if self.segment is not None and state.max_steps and state.global_step >= state.max_steps:
            seg = self.segment  # the last step: nothing is trained in a next phase
        if seg is not self.segment:
            previous = self.segment.name if self.segment else None
            self.segment = seg
            self.log.emit(
                "phase",
                step=state.global_step,
                epoch=round(rows / plan.rows_per_epoch, 4),
                name=seg.name,
                index=seg.index,
                start_epoch=seg.start_epoch,
                end_epoch=None if math.isinf(seg.end_epoch) else seg.end_epoch,
                weights=rounded(seg.shares),
                previous=previous,
                resumed=resumed,
            )
            self._mix(args, state)
        elif state.global_step % self.mix_every == 0:
            self._mix(args, state)

    def _mix(self, args, state) -> None:
        plan = self.plan
        rows = self._rows(args, state)
        seg = plan.segment_at(rows)
        ex, tok = plan.seen(rows)
        ex0, tok0 = plan.seen(seg.row_start)
        total = int(plan.sizes.sum())
        target = seg.shares or {
            n: int(s) / total for n, s in zip(plan.names, plan.sizes.tolist(), strict=True)
        }
        self.log.emit(
            "mix",
            step=state.global_step,
            phase=seg.name,
            examples=plan.named(ex),
            tokens=plan.named(tok),
            phase_examples=plan.named(ex - ex0),
            target=rounded(target),
        )

    def _emit_plan(self, state, end_rows: int) -> None:
        plan = self.plan
        self.log.emit(
            "curriculum",
            step=state.global_step,
            rows_per_epoch=plan.rows_per_epoch,
            examples=int(plan.sizes.sum()),
            categories=plan.named(plan.sizes),
            packing=plan.packing,
            phases=plan.phase_table(end_rows),
        )
