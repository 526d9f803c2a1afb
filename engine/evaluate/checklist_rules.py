"""The checklist's automatic rules: each measures one item from the run's evidence.

``Sources`` reads the evidence once per evaluation (the run log's steps and evals, checkpoints,
the output folder, eval results); each ``rule_*`` returns a ``Measure``; ``RULES`` maps the
rule names of ``engine.config.rule_names`` to them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from engine.evaluate.checklist_items import Item, Measure
from engine.run import lineage, records
from engine.run.rundir import RunDir, output_dir_of, read_eval_results, read_json

R = TypeVar("R", bound=records.Record)


class Sources:
    """What the rules look at, read once per evaluation of the checklist."""

    def __init__(self, run_dir: Path, config=None, state: dict | None = None) -> None:
        from engine.run.chat_log import chat_damage
        from engine.run.events import LogContents, damage_said, dedupe_steps, read_events
        from engine.run.rebuild import lost_steps
        from engine.run.seal import check

        self.run_dir = Path(run_dir)
        self.config = config
        events = RunDir(self.run_dir).events
        log = read_events(events) if events.is_file() else LogContents(damage=check(events, "run log"))
        raw = log.records
        self.damage = damage_said(log)  # said by the CLI and the card
        if self.damage:  # the step losses up to the last save are in its trainer_state.json
            rebuilt, said = lost_steps(_anchored(output_dir_of(self.run_dir, raw), self.run_dir), raw)
            raw = raw + rebuilt  # steps the log lacks only: dedupe_steps orders them
            self.damage += [said] if said else []
        self.damage += chat_damage(self.run_dir)
        self.records = records.decode_all(raw)
        self.steps = [r for r in records.decode_all(dedupe_steps(raw)) if isinstance(r, records.Step)]
        self.evals = [r for r in self.records if isinstance(r, records.Eval)]
        self.output_dir = _anchored(output_dir_of(self.run_dir, raw), self.run_dir)
        self.results = read_eval_results(self.run_dir)
        health = getattr(config, "health", None)
        self.spike_factor = getattr(health, "spike_factor", 1.5)
        self.spike_window = getattr(health, "spike_window", 50)

    def of(self, kind: type[R]) -> list[R]:
        """The run log's records of one declared kind, in log order."""
        return [r for r in self.records if isinstance(r, kind)]

    def losses(self) -> list[tuple[records.Step, float]]:
        return [(r, _num(r.loss)) for r in self.steps if r.loss is not None]

    def saved_at(self, path: str) -> Path:
        """Where a record's checkpoint is: in the run's output_dir (a record written with a
        relative output_dir names it from the trainer's folder, not from where this runs)."""
        return (self.output_dir / Path(path).name).resolve() if self.output_dir else Path(path).resolve()

    def checkpoints(self):
        from engine.run.checkpoints import scan

        return scan(self.output_dir) if self.output_dir else ([], [])


def _anchored(out: Path | None, run_dir: Path) -> Path | None:
    """A relative output_dir (Axolotl's are: taken from where the trainer ran) found from here:
    the current folder, else the folder the run's relative logs_dir hung from."""
    if out is None or out.is_absolute():
        return out
    for base in (Path.cwd(), run_dir.resolve().parent.parent):
        if (base / out).is_dir():
            return base / out
    return out


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


# -- rules -------------------------------------------------------------------------------


def _window(n: int, item: Item) -> int:
    return max(1, min(n, int(item.params.get("window") or max(1, n // 10))))


def rule_loss_decreases(src: Sources, item: Item) -> Measure:
    pts = src.losses()
    if len(pts) < 2:
        return Measure("pending", detail="fewer than 2 logged steps")
    w = _window(len(pts), item)
    first = statistics.fmean(v for _, v in pts[:w])
    last = statistics.fmean(v for _, v in pts[-w:])
    spikes = _spikes(pts, src)
    ok = math.isfinite(last) and last < first and not spikes
    value = f"{_fmt(first)} -> {_fmt(last)}" + (f", {len(spikes)} spike(s)" if spikes else "")
    detail = f"mean of the first and last {w} logged steps"
    if spikes:
        detail += f"; spikes at steps {', '.join(str(s) for s in spikes[:5])}"
    return Measure("pass" if ok else "fail", value, detail, pts[-1][0].t)


def _oom(text: str) -> bool:
    t = text.lower()
    return "out of memory" in t or "outofmemory" in t or "oom" in t.split()


def rule_no_oom(src: Sources, item: Item) -> Measure:
    hits = [
        r
        for r in src.records
        if (isinstance(r, records.End) and _oom(f"{r.message or ''} {r.traceback or ''}"))
        or (isinstance(r, records.Alert) and ("oom" in (r.rule or "").lower() or _oom(r.message or "")))
    ]
    if hits:
        r = hits[-1]
        return Measure("fail", f"{len(hits)} OOM record(s)", (r.message or "")[:200], r.t)
    if not src.steps:
        return Measure("pending", detail="no training steps logged yet")
    return Measure("pass", f"{len(src.steps)} steps, no OOM", when=src.steps[-1].t)


def rule_checkpoints_saved(src: Sources, item: Item) -> Measure:
    saves = [r for r in src.of(records.Save) if r.path]
    if not saves:
        return Measure("pending", detail="no checkpoint saved yet")
    complete, _ = src.checkpoints()
    paths = {c.path.resolve() for c in complete}
    newest = src.saved_at(saves[-1].path)
    ok = newest in paths
    value = f"{len(saves)} saved, newest {newest.name} {'complete' if ok else 'MISSING or incomplete'}"
    return Measure("pass" if ok else "fail", value, str(newest), saves[-1].t)


def rule_all_checkpoints_saved(src: Sources, item: Item) -> Measure:
    saves = [r for r in src.of(records.Save) if r.path]
    if not saves:
        return Measure("pending", detail="no checkpoint saved yet")
    removed = {src.saved_at(r.path) for r in src.of(records.CheckpointRemoved) if r.path}
    complete, torn = src.checkpoints()
    present = {c.path.resolve() for c in complete}
    saved = {src.saved_at(r.path) for r in saves}
    kept = saved & present
    gone = saved - present - removed
    torn_alerts = [r for r in src.of(records.Alert) if r.rule == "torn_checkpoint"]
    ok = not gone and not torn and not torn_alerts
    value = f"{len(saved)} saved: {len(kept)} on disk, {len(saved & removed)} removed by retention"
    problems = [f"missing {p.name}" for p in sorted(gone)] + [f"torn {p.name}" for p in torn]
    problems += [r.message or "" for r in torn_alerts]
    return Measure("pass" if ok else "fail", value, "; ".join(problems)[:300], saves[-1].t)


def rule_final_loss(src: Sources, item: Item) -> Measure:
    pts = src.losses()
    if not pts:
        return Measure("pending", detail="no training steps logged yet")
    w = int(item.params.get("window") or min(10, len(pts)))
    w = max(1, min(w, len(pts)))
    value = statistics.fmean(v for _, v in pts[-w:])
    return _bounded(
        value,
        item,
        f"mean loss of the last {w} logged steps (step {pts[-1][0].step})",
        pts[-1][0].t,
    )


def rule_val_perplexity(src: Sources, item: Item) -> Measure:
    if not src.evals:
        return Measure("pending", detail="no evaluation logged (set val_set_size and eval_steps)")
    r = src.evals[-1]
    ppl = _num(r.perplexity) if r.perplexity is not None else math.exp(min(_num(r.eval_loss), 50))
    return _bounded(ppl, item, f"eval at step {r.step}", r.t)


def _spikes(pts: list[tuple[records.Step, float]], src: Sources) -> list[int]:
    """Steps whose loss jumps above spike_factor x the median of the previous window."""
    out = []
    losses = [v for _, v in pts]
    w = max(2, src.spike_window)
    for i in range(len(losses)):
        prev = [x for x in losses[max(0, i - w) : i] if math.isfinite(x)]
        if len(prev) < min(w, 5):
            continue
        med = statistics.median(prev)
        # An absolute floor keeps noise near zero loss from counting as a jump.
        if losses[i] > src.spike_factor * med and losses[i] - med > 0.1:
            out.append(pts[i][0].step)
    return out


def rule_no_spikes(src: Sources, item: Item) -> Measure:
    pts = src.losses()
    if len(pts) < 2:
        return Measure("pending", detail="fewer than 2 logged steps")
    nonfinite = [r.step for r, v in pts if not math.isfinite(v)]
    spikes = _spikes(pts, src)
    alerts = [
        r
        for r in src.of(records.Alert)
        if any(k in (r.rule or "").lower() for k in ("spike", "nan", "diverg"))
    ]
    w = _window(len(pts), item)
    first = statistics.fmean(v for _, v in pts[:w])
    last = statistics.fmean(v for _, v in pts[-w:])
    diverged = math.isfinite(first) and (not math.isfinite(last) or last > first)
    problems = []
    if nonfinite:
        problems.append(f"non-finite loss at steps {', '.join(map(str, nonfinite[:5]))}")
    if spikes:
        problems.append(f"spikes at steps {', '.join(map(str, spikes[:5]))}")
    if diverged:
        problems.append(f"loss rose: {_fmt(first)} -> {_fmt(last)}")
    if alerts:
        problems.append(f"{len(alerts)} alert(s): {alerts[-1].rule}")
    value = f"{len(spikes)} spike(s), {len(nonfinite)} non-finite, {len(alerts)} alert(s)"
    return Measure("fail" if problems else "pass", value, "; ".join(problems), pts[-1][0].t)


def _newest_result(src: Sources, suite: str) -> dict | None:
    done = [r for r in src.results if r.get("suite") == suite and r.get("status") == "completed"]
    return done[-1] if done else None


def rule_eval_score(src: Sources, item: Item) -> Measure:
    suite = item.params.get("suite") or "inference"
    res = _newest_result(src, suite)
    if res is None:
        running = [r for r in src.results if r.get("suite") == suite]
        hint = (
            f"last run {running[-1].get('status')}"
            if running
            else f"run `leviathan-cockpit eval CHECKPOINT --suite {suite}`"
        )
        return Measure("pending", detail=f"no completed {suite} result ({hint})")
    cat = item.params.get("category")
    counts = res.get("by_category", {}).get(cat) if cat else res
    if not counts or not counts.get("total"):
        return Measure("pending", detail=f"the {suite} suite has no `{cat}` prompts")
    passed, total = counts["passed"], counts["total"]
    m = _bounded(passed / total, item, f"{suite} suite on {res.get('label')}", res.get("finished"))
    m.value = f"{passed}/{total} ({100 * passed / total:.0f}%) on {res.get('label')}"
    return m


def rule_lmeval(src: Sources, item: Item) -> Measure:
    task, metric = item.params.get("task"), item.params.get("metric")
    for res in reversed([r for r in src.results if r.get("suite") == "lmeval"]):
        entry = (res.get("tasks") or {}).get(task)
        if not entry:
            continue
        value, name = entry.get("value"), entry.get("metric")
        if metric:
            vals = {k.split(",")[0]: v for k, v in (entry.get("metrics") or {}).items() if "_stderr" not in k}
            value, name = vals.get(metric), metric
        if not isinstance(value, (int, float)):
            return Measure("fail", detail=f"{task} result has no metric {metric}")
        m = _bounded(float(value), item, f"lm-eval {task} {name} on {res.get('label')}", res.get("finished"))
        m.value = f"{100 * value:.1f}% {name} on {res.get('label')}"
        return m
    return Measure(
        "pending", detail=f"no lm-eval result for {task} (leviathan-cockpit eval MODEL --suite lmeval)"
    )


def _model_folder(p: Path) -> bool:
    return (p / "config.json").is_file() and any(
        f.suffix in (".safetensors", ".bin") or f.name.endswith(".safetensors.index.json")
        for f in p.iterdir()
    )


def _candidates(src: Sources, item: Item, suffixes: tuple[str, ...], made: list[dict] = ()) -> list[Path]:
    """Where the product may be: the item's path, what the run's
    merge/quantize steps wrote (newest first), then the conventional names beside output_dir."""
    if item.params.get("path"):
        return [Path(item.params["path"])]
    out = []
    out += [Path(r["output"]) for r in made if r.get("output")]
    if src.output_dir:
        out += [src.output_dir / s for s in suffixes] + [Path(f"{src.output_dir}-{s}") for s in suffixes]
    return out


def rule_merged_model(src: Sources, item: Item) -> Measure:
    for p in _candidates(src, item, ("merged",), lineage.step_outputs(src.run_dir, "merge")):
        if p.is_dir() and _model_folder(p):
            source = lineage.read_info(p).get("checkpoint")
            gone = bool(source) and not Path(source).is_dir()  # retention removed it after the merge
            detail = f"merged from {Path(source).name}" if source else ""
            if gone:
                detail += ", since deleted by retention: this folder is its only copy"
            return Measure("pass", str(p), detail, when=p.stat().st_mtime)
    return Measure("pending", detail="no merged model folder yet (leviathan-cockpit merge CHECKPOINT -o DIR)")


GGUF_4BIT = ("q4_k_m", "q4_k_s", "q4_0", "q4_1")
# A q4_k_m file is 4-bit where its matrices are: rows not a multiple of 256 are stored as Q5_0/Q8_0.
GGUF_4BIT_TYPES = {"Q4_K", "Q4_0", "Q4_1"}


def rule_quantized_model(src: Sources, item: Item) -> Measure:
    nf4 = [r for r in lineage.step_outputs(src.run_dir, "quantize") if r.get("type") == "nf4"]
    for p in _candidates(src, item, ("merged-nf4", "nf4", "quantized"), nf4):
        cfg = read_json(p / "config.json") if p.is_dir() else None
        if cfg is not None and _model_folder(p):
            q = cfg.get("quantization_config") or {}
            if q.get("load_in_4bit") or q.get("bnb_4bit_quant_type") or q.get("bits") == 4:
                return Measure(
                    "pass", f"{p} ({q.get('bnb_4bit_quant_type', '4-bit')})", when=p.stat().st_mtime
                )
            return Measure("fail", str(p), "the folder is not quantized to 4 bits", p.stat().st_mtime)
    gguf = verified_gguf(src)
    if gguf is not None:
        return gguf
    return Measure(
        "pending",
        detail="no quantized model yet (leviathan-cockpit quantize DIR -o OUT --type nf4, or "
        "leviathan-cockpit export gguf DIR --quant q4_k_m)",
    )


def verified_gguf(src: Sources) -> Measure | None:
    """A 4-bit GGUF `export gguf` wrote and checked (its record, and the file still as recorded)."""
    others = []
    for rec in lineage.step_outputs(src.run_dir, "export_gguf"):
        for f in rec.get("files") or []:
            p = Path(f.get("path", ""))
            if (
                not (f.get("check") or {}).get("ok")
                or not p.is_file()
                or p.stat().st_size != f.get("size_bytes")
            ):
                continue
            stored = set((f.get("check") or {}).get("by_type") or ())
            if f.get("quant") in GGUF_4BIT and stored & GGUF_4BIT_TYPES:
                return Measure("pass", f"{p} (GGUF {f['quant']}, tensors verified)", when=p.stat().st_mtime)
            if f.get("quant") in GGUF_4BIT:  # rows too short for 4 bits: llama.cpp stored 5-8-bit types
                others.append(f"{f['quant']} ({p.name}, stored as {'/'.join(sorted(stored - {'F32'}))})")
            else:
                others.append(f"{f.get('quant')} ({p.name})")
    if others:
        narrow = any("stored as" in o for o in others)
        hint = (
            "its rows are too short for 4-bit K-quants (llama.cpp stores them in 5-8 bits)"
            if narrow
            else "leviathan-cockpit export gguf DIR --quant q4_k_m"
        )
        return Measure("pending", detail=f"verified GGUF {', '.join(others)}, none 4-bit: {hint}")
    return None


def rule_hub_upload(src: Sources, item: Item) -> Measure:
    pushed = lineage.step_outputs(src.run_dir, "push")  # a real upload only: a dry run records nothing
    if pushed:
        return Measure("pass", str(pushed[0].get("url") or pushed[0].get("repo_id")), when=pushed[0].get("t"))
    return Measure(
        "pending", detail="not uploaded (leviathan-cockpit push DIR --repo-id USER/NAME), or tick by hand"
    )


def _bounded(value: float, item: Item, detail: str, when) -> Measure:
    lo, hi = item.params.get("min"), item.params.get("max")
    ok = math.isfinite(value) and (lo is None or value >= lo) and (hi is None or value < hi)
    return Measure("pass" if ok else "fail", _fmt(value), detail, when)


def rule_chat_marks(src: Sources, item: Item) -> Measure:
    """The operator's pass/fail marks on chat answers to one preset group (the chat pane's ^y / ^n)."""
    from engine.run.chat_log import mark_summary, read_exchanges

    group = item.params.get("preset_group") or "free"
    counts = mark_summary(src.run_dir)["by_group"].get(group, {})
    marked = counts.get("pass", 0) + counts.get("fail", 0)
    if not marked:
        return Measure("pending", detail=f"ask the {group} presets in the chat pane and mark the answers")
    times = [
        r.get("t") for r in read_exchanges(src.run_dir) if (r.get("group") or "free") == group and r["mark"]
    ]
    m = _bounded(
        counts["pass"] / marked, item, f"{group} answers marked in the chat pane", max(times, default=None)
    )
    m.value = f"{counts['pass']}/{marked} marked pass"
    return m


RULES: dict[str, Callable[[Sources, Item], Measure]] = {
    "chat_marks": rule_chat_marks,
    "loss_decreases": rule_loss_decreases,
    "no_oom": rule_no_oom,
    "checkpoints_saved": rule_checkpoints_saved,
    "all_checkpoints_saved": rule_all_checkpoints_saved,
    "final_loss": rule_final_loss,
    "val_perplexity": rule_val_perplexity,
    "no_spikes": rule_no_spikes,
    "eval_score": rule_eval_score,
    "lmeval": rule_lmeval,
    "merged_model": rule_merged_model,
    "quantized_model": rule_quantized_model,
    "hub_upload": rule_hub_upload,
}
