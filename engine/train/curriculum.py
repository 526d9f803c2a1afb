"""Curriculum phases: a sampler over the training set, reproducible by seed and exact on resume.

The config's ``curriculum.phases`` say, over spans of epochs, what share of the examples
each ``_category`` gets. Nothing is rewritten on disk: a :class:`Plan` decides, for every
row the trainer will see, which tokenized examples go in it.

How it fits TRL's ``SFTTrainer`` (engine/train/curriculum_trainer.py):

- An epoch is ``rows_per_epoch`` rows: the number of rows the training set packs into when
  every example is taken once (the natural mix). ``max_steps``, the LR schedule and the
  cockpit's ETA are the same as without a curriculum.
- Packing happens *after* sampling, per phase: examples are drawn for the phase, then packed
  into rows of at most ``sequence_len`` tokens by an online best-fit packer (a pool of open
  rows; each example goes into the fullest row it fits). A row never mixes two phases.
  Documents stay apart as with TRL's own packing: each row carries ``seq_lengths``, from
  which TRL's padding-free collator builds per-document ``position_ids``/``cu_seq_lens``.
- Draws are without replacement within a category: each category (and the whole set, for
  the natural mix) is walked in a seeded random order, reshuffled when used up; a weighted
  phase picks the category of each draw with a seeded generator.
- The trainer's sampler yields row *positions* ``epoch * rows_per_epoch + i``; the row at a
  position is a pure function of (data, config, seed). HF Trainer resumes by skipping the
  first batches of the epoch's dataloader, so a resumed run sees the very rows the
  uninterrupted run would have (tests/test_curriculum.py checks this on a real run).

The run log gets a ``curriculum`` record (the plan: rows per epoch, each phase's span in steps
and how many draws, and passes over each category, it makes), a ``phase`` record whenever
the phase changes (and at the start or resume), and a ``mix`` record every ``mix_every`` steps:
examples and tokens seen so far per category, over the run and in the current phase, with
the phase's target shares.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from array import array
from dataclasses import dataclass

from engine.errors import UserError

NATURAL = "natural"


@dataclass
class Segment:
    """A span of rows with one sampling rule: a configured phase, or a natural-mix gap."""

    index: int  # position among the configured phases; -1 for a gap
    name: str
    start_epoch: float
    end_epoch: float  # math.inf for the natural mix after the last phase
    shares: dict[str, float] | None  # target share of examples per category; None: natural
    row_start: int
    row_end: int  # exclusive; a very large number after the last phase


def check_names(phases, present: set[str], first: int = 0) -> None:
    """Every category a phase weights must have training rows (a typo would silently drop it)."""
    for i, phase in enumerate(phases, first):
        for cat in phase.weights or {}:
            if cat != "*" and cat not in present:
                raise UserError(
                    f"`curriculum.phases[{i}].weights.{cat}`: no training row has _category {cat!r} "
                    f"(categories: {', '.join(sorted(present))})",
                    "use the names `leviathan-cockpit check CONFIG` lists, or `*` for the rest",
                )


def _rng(seed: int, *parts):
    import numpy as np

    words = [seed]
    for p in parts:
        if isinstance(p, str):
            words += list(hashlib.sha256(p.encode()).digest()[:8])
        else:
            words.append(int(p))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


class _Walk:
    """A seeded random order over some examples, reshuffled each time it is used up."""

    def __init__(self, members, seed: int, name: str) -> None:
        self.members = members
        self.seed, self.name = seed, name
        self.cycle, self.pos = -1, 0
        self.order = array("i")

    def peek(self) -> int:
        if self.pos >= len(self.order):
            self.cycle += 1
            perm = _rng(self.seed, "walk", self.name, self.cycle).permutation(len(self.members))
            self.order = array("i", self.members[perm].astype("i").tobytes())
            self.pos = 0
        return self.order[self.pos]

    def take(self) -> None:
        self.pos += 1


class Plan:
    """Which examples go in each row of the run, epoch after epoch.

    Args:
        categories: the category code of every training example (ints, 0..len(names)-1).
        names: the category name of each code.
        lengths: token count of every example.
        phases: the config's ``curriculum.phases``.
        seed: the run's seed.
        max_length: tokens a row holds (``sequence_len``).
        packing: False: one example a row.
        pool: rows kept open by the packer.
    """

    def __init__(
        self, categories, names, lengths, phases, *, seed: int, max_length: int, packing: bool, pool: int = 32
    ) -> None:
        import numpy as np

        self.categories = np.asarray(categories, np.int32)
        self.lengths = np.minimum(np.asarray(lengths, np.int64), max_length).clip(1)
        self._length_of = array("i", self.lengths.astype("i").tobytes())  # fast lookups
        self.names = list(names)
        self.seed, self.max_length, self.packing, self.pool = seed, max_length, packing, pool
        if not len(self.categories):
            raise UserError("the curriculum has no training rows to sample", "check `datasets` in the config")
        self.sizes = np.bincount(self.categories, minlength=len(self.names))
        self._members = [
            np.flatnonzero(self.categories == c).astype(np.int32) for c in range(len(self.names))
        ]
        self.rows_per_epoch = self._count_rows()
        self.segments = self._segments(phases)
        self._starts = [s.row_start for s in self.segments]
        # generated epochs: (row offsets, examples), the streams' state after each, totals
        self._epochs: list[tuple] = []
        self._totals: list[tuple] = []
        self._walks = None

    # -- the layout ---------------------------------------------------------------------------

    def _count_rows(self) -> int:
        """Rows that one pass over every example packs into (the natural walk's first order,
        so a natural first epoch takes every example once)."""
        walk = self._natural_walk()
        walk.peek()
        order = walk.order
        it = iter(order)
        nxt = [next(it, None)]

        def peek():
            return nxt[0]

        def take():
            nxt[0] = next(it, None)

        rows = array("i")
        self._fill(math.inf, peek, take, rows, None)
        return max(1, len(rows))

    def _natural_walk(self) -> _Walk:
        import numpy as np

        return _Walk(np.arange(len(self.categories), dtype=np.int32), self.seed, "\0all")

    def _segments(self, phases) -> list[Segment]:
        n = self.rows_per_epoch
        out: list[Segment] = []
        at, at_epoch = 0, 0.0
        for i, ph in enumerate(phases):
            start, end = round(ph.start_epoch * n), round(ph.end_epoch * n)
            if start > at:
                out.append(Segment(-1, NATURAL, at_epoch, ph.start_epoch, None, at, start))
            if end > start:
                out.append(Segment(i, ph.name, ph.start_epoch, ph.end_epoch, self._shares(ph, i), start, end))
            at, at_epoch = max(at, end), ph.end_epoch
        out.append(Segment(-1, NATURAL, at_epoch, math.inf, None, at, 1 << 62))
        return out

    def _shares(self, phase, i: int) -> dict[str, float] | None:
        if phase.weights is None:
            return None
        present = {name for name, size in zip(self.names, self.sizes.tolist(), strict=True) if size}
        check_names([phase], present, first=i)
        # "*": one weight for all the categories not named, shared by their natural sizes
        rest = phase.weights.get("*", 0.0)
        named = {c: w for c, w in phase.weights.items() if c != "*"}
        others = {c: int(self.sizes[self.names.index(c)]) for c in sorted(present - set(named))}
        if not others:
            rest = 0.0
        total = sum(named.values()) + rest
        if total <= 0:
            raise UserError(
                f"`curriculum.phases[{i}].weights`: no category with a weight above 0 has rows",
                "give a weight to a category that has rows",
            )
        shares = {c: w / total for c, w in named.items()}
        pool = sum(others.values())
        shares.update({c: rest / total * n / pool for c, n in others.items()} if rest else {})
        return {c: v for c, v in sorted(shares.items()) if v > 0}

    def segment_at(self, row: int) -> Segment:
        return self.segments[bisect.bisect_right(self._starts, row) - 1]

    # -- generation ---------------------------------------------------------------------------

    def _fill(self, limit, peek, take, rows, examples_out) -> None:
        """Pack drawn examples into ``limit`` rows (fewer only if the draws run out), appending
        each row's example count to ``rows`` and its example ids to ``examples_out``."""
        lengths = self._length_of
        cap = self.max_length
        if not self.packing:
            made = 0
            while made < limit and (ex := peek()) is not None:
                take()
                rows.append(1)
                made += 1
                if examples_out is not None:
                    examples_out.append(ex)
            return
        rems: list[int] = []  # open rows' free tokens, ascending
        bins: list[list[int]] = []  # open rows' examples, in the same order
        closed = 0
        bisect_left = bisect.bisect_left

        def close(j: int) -> None:
            rems.pop(j)
            b = bins.pop(j)
            rows.append(len(b))
            if examples_out is not None:
                examples_out.extend(b)

        while (ex := peek()) is not None:
            n = lengths[ex]
            j = bisect_left(rems, n)
            if j < len(rems):  # best fit: the fullest open row with room
                r = rems.pop(j) - n
                b = bins.pop(j)
                b.append(ex)
            else:
                if closed + len(bins) >= limit:
                    break  # a new row would be one too many: this example waits
                if len(bins) >= self.pool:
                    close(0)  # the fullest row leaves the pool
                    closed += 1
                r, b = cap - n, [ex]
            k = bisect_left(rems, r)
            rems.insert(k, r)
            bins.insert(k, b)
            take()
        while bins:  # fullest first
            close(0)

    def _ensure(self, epoch: int) -> None:
        import numpy as np

        if self._walks is None:
            self._walks = {
                None: self._natural_walk(),
                **{c: _Walk(m, self.seed, self.names[c]) for c, m in enumerate(self._members) if len(m)},
            }
        n = self.rows_per_epoch
        while len(self._epochs) <= epoch:
            e = len(self._epochs)
            rows, examples = array("i"), array("i")  # compact: an epoch can be millions
            lo, hi = e * n, (e + 1) * n
            k = bisect.bisect_right(self._starts, lo) - 1
            while lo < hi:
                seg = self.segments[k]
                stop = min(hi, seg.row_end)
                peek, take = self._draws(seg, e)
                before = len(rows)
                self._fill(stop - lo, peek, take, rows, examples)
                if len(rows) - before < stop - lo:  # cannot happen with an endless walk
                    raise RuntimeError("curriculum segment came up short")
                lo, k = stop, k + 1
            offsets = np.zeros(len(rows) + 1, np.int64)
            np.cumsum(np.frombuffer(rows, np.int32), out=offsets[1:])
            ex = np.frombuffer(examples, np.int32).copy()
            self._epochs.append((offsets, ex))
            cats = self.categories[ex]
            self._totals.append(
                (
                    np.bincount(cats, minlength=len(self.names)),
                    np.bincount(cats, weights=self.lengths[ex], minlength=len(self.names)).astype(np.int64),
                )
            )

    def _draws(self, seg: Segment, epoch: int):
        walks = self._walks
        if seg.shares is None:
            w = walks[None]
            return w.peek, w.take
        import numpy as np

        codes = np.array([self.names.index(c) for c in seg.shares], np.int64)
        p = np.array(list(seg.shares.values()), np.float64)
        rng = _rng(self.seed, "phase", seg.index, epoch)
        state = {"block": [], "i": 0}

        def pick() -> int:
            if state["i"] >= len(state["block"]):
                state["block"] = codes[rng.choice(len(codes), size=4096, p=p)].tolist()
                state["i"] = 0
            return state["block"][state["i"]]

        def peek() -> int:
            return walks[pick()].peek()

        def take() -> None:
            walks[pick()].take()
            state["i"] += 1

        return peek, take

    # -- lookups ------------------------------------------------------------------------------

    def row(self, position: int):
        """Example ids of the row at a position of the whole run (epoch * rows_per_epoch + i)."""
        e, r = divmod(position, self.rows_per_epoch)
        self._ensure(e)
        offsets, ex = self._epochs[e]
        return ex[offsets[r] : offsets[r + 1]]

    def seen(self, rows: int):
        """(examples, tokens) per category code in the first ``rows`` rows of the run."""
        import numpy as np

        e, r = divmod(rows, self.rows_per_epoch)
        self._ensure(e)
        examples = np.zeros(len(self.names), np.int64)
        tokens = np.zeros(len(self.names), np.int64)
        for ce, ct in self._totals[:e]:
            examples += ce
            tokens += ct
        offsets, ex = self._epochs[e]
        part = ex[: offsets[r]]
        examples += np.bincount(self.categories[part], minlength=len(self.names))
        tokens += np.bincount(
            self.categories[part], weights=self.lengths[part], minlength=len(self.names)
        ).astype(np.int64)
        return examples, tokens

    def named(self, counts) -> dict[str, int]:
        return {self.names[c]: int(v) for c, v in enumerate(counts) if v}

    def phase_table(self, end_rows: int) -> list[dict]:
        """Each segment up to ``end_rows``: its span, target shares, draws per category and
        passes over each category (above 1: the phase repeats that category's examples)."""
        out = []
        for seg in self.segments:
            if seg.row_start >= end_rows:
                break
            stop = min(seg.row_end, end_rows)
            draws = self.seen(stop)[0] - self.seen(seg.row_start)[0]
            out.append(
                {
                    "name": seg.name,
                    "start_epoch": seg.start_epoch,
                    "end_epoch": round(stop / self.rows_per_epoch, 4),
                    "rows": stop - seg.row_start,
                    "weights": rounded(seg.shares),
                    "draws": self.named(draws),
                    "passes": {
                        self.names[c]: round(int(d) / int(self.sizes[c]), 3)
                        for c, d in enumerate(draws)
                        if d and self.sizes[c]
                    },
                }
            )
        return out


def preview(config, categories: list[str], lengths) -> str:
    """The curriculum's plan as text, for ``leviathan-cockpit check --tokens``."""
    import numpy as np

    index: dict[str, int] = {}
    codes = np.array([index.setdefault(c, len(index)) for c in categories], np.int32)
    plan = Plan(
        codes,
        sorted(index, key=index.get),
        np.frombuffer(lengths, np.int32) if not isinstance(lengths, np.ndarray) else lengths,
        config.curriculum.phases,
        seed=config.seed,
        max_length=config.sequence_len,
        packing=config.sample_packing,
    )
    epochs = config.num_epochs
    table = plan.phase_table(round(epochs * plan.rows_per_epoch))
    out = [
        f"curriculum preview ({len(codes):,} rows before the validation split; "
        f"{plan.rows_per_epoch:,} packed rows an epoch, {epochs:g} epochs):"
    ]
    for ph in table:
        out.append(f"  {ph['name']}: epochs {ph['start_epoch']:g}-{ph['end_epoch']:g}, {ph['rows']:,} rows")
        for cat, d in sorted(ph["draws"].items(), key=lambda kv: -kv[1]):
            out.append(f"    {cat:<20} {d:>12,} draws  {ph['passes'][cat]:>7.2f} passes")
    return "\n".join(out)


def rounded(shares: dict[str, float] | None) -> dict[str, float] | None:
    return None if shares is None else {k: round(v, 4) for k, v in shares.items()}


def rows_consumed(plan: Plan, step: int, micro: int, accum: int, world: int = 1) -> int:
    """Rows the trainer has taken after ``step`` optimizer steps (HF Trainer's epoch layout)."""
    per_batch = micro * world
    batches = math.ceil(plan.rows_per_epoch / per_batch)
    steps_per_epoch = math.ceil(batches / accum)
    e, k = divmod(step, steps_per_epoch)
    return e * plan.rows_per_epoch + min(k * accum * per_batch, plan.rows_per_epoch)
