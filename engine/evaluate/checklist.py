"""The validation checklist: the guide's gates, measured where they can be, ticked where not.

Two default groups, from the guide: ``validation`` (the 10% run's critical checks: "if ANY
check fails, debug on the 10% dataset before proceeding") and ``post_training`` (its
fifteen-item list). Each item is either automatic, a rule over the run log, the files
(checkpoints, the merged and quantized folders) or an evaluation result, showing the
measured value, pass/fail and when it was measured; or manual, ticked by the operator with
an optional note. Any item may be ticked by hand (say the upload was done by hand); the
tick and its note are kept beside the measurement.

The config's ``checklist:`` section changes items by id (thresholds, title, required,
``enabled: false``) or adds new ones. State lives in ``logs/<run>/checklist.json``, written
atomically under a file lock, so it survives restarts and is shared by the cockpit, an
``attach`` and ``leviathan-cockpit checklist RUN_DIR``.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.run import lineage
from engine.run.rundir import (
    CHECKLIST,
    EVENTS,
    RunDir,
    atomic_write_json,
    output_dir_of,
    read_eval_results,
    read_json,
)

STATE_FILE = CHECKLIST  # engine.run.rundir names it
GROUPS = {"validation": "10% run: critical checks", "post_training": "post-training checklist"}

# Default items: id, group, title (formatted with the item's parameters), rule, parameters.
DEFAULT_ITEMS: list[dict] = [
    {
        "id": "loss_smooth",
        "group": "validation",
        "title": "Loss curve decreases smoothly",
        "rule": "loss_decreases",
    },
    {"id": "no_oom", "group": "validation", "title": "No OOM errors", "rule": "no_oom"},
    {
        "id": "checkpoints_saved",
        "group": "validation",
        "title": "Checkpoints save successfully",
        "rule": "checkpoints_saved",
    },
    {
        "id": "identity_responds",
        "group": "validation",
        "title": 'Model responds as "{persona}" to identity questions',
        "rule": "eval_score",
        "suite": "identity",
        "min": 0.9,
    },
    {
        "id": "code_works",
        "group": "validation",
        "title": "Code generation still functional (code prompts >= {min:.0%})",
        "rule": "eval_score",
        "suite": "inference",
        "category": "code",
        "min": 0.75,
    },
    {
        "id": "esoteric_present",
        "group": "validation",
        "title": "Esoteric knowledge present (esoteric prompts >= {min:.0%})",
        "rule": "eval_score",
        "suite": "inference",
        "category": "esoteric",
        "min": 0.75,
    },
    {
        "id": "inference_10pct",
        "group": "validation",
        "title": "Inference test suite >= {min:.0%} pass",
        "rule": "eval_score",
        "suite": "inference",
        "min": 0.75,
    },
    {
        "id": "final_loss",
        "group": "post_training",
        "title": "Final training loss < {max}",
        "rule": "final_loss",
        "max": 1.0,
    },
    {
        "id": "val_perplexity",
        "group": "post_training",
        "title": "Validation perplexity < {max}",
        "rule": "val_perplexity",
        "max": 2.0,
    },
    {
        "id": "no_spikes",
        "group": "post_training",
        "title": "No divergence or spikes in the loss curve",
        "rule": "no_spikes",
    },
    {
        "id": "all_checkpoints",
        "group": "post_training",
        "title": "All checkpoints saved successfully",
        "rule": "all_checkpoints_saved",
    },
    {
        "id": "merged",
        "group": "post_training",
        "title": "Adapters merged into the base model",
        "rule": "merged_model",
    },
    {
        "id": "inference_suite",
        "group": "post_training",
        "title": "Inference test suite >= {min:.0%} pass",
        "rule": "eval_score",
        "suite": "inference",
        "min": 0.8,
    },
    {
        "id": "humaneval",
        "group": "post_training",
        "title": "HumanEval >= {min:.0%} pass@1",
        "rule": "lmeval",
        "task": "humaneval",
        "metric": "pass@1",
        "min": 0.4,
    },
    {
        "id": "truthfulqa",
        "group": "post_training",
        "title": "TruthfulQA >= {min:.0%} accuracy",
        "rule": "lmeval",
        "task": "truthfulqa_mc2",
        "metric": "acc",
        "min": 0.35,
    },
    {
        "id": "identity",
        "group": "post_training",
        "title": "Identity tests >= {min:.0%} correct",
        "rule": "eval_score",
        "suite": "identity",
        "min": 0.9,
    },
    {
        "id": "esoteric_spot",
        "group": "post_training",
        "title": "Esoteric knowledge spot checks (chat answers marked pass)",
        "rule": "chat_marks",
        "preset_group": "esoteric",
        "min": 1.0,
    },
    {
        "id": "dark_topics",
        "group": "post_training",
        "title": "Dark topic handling, nuanced, not refused (chat answers marked pass)",
        "rule": "chat_marks",
        "preset_group": "dark",
        "min": 1.0,
    },
    {
        "id": "hub_upload",
        "group": "post_training",
        "title": "Model uploaded to the Hugging Face Hub",
        "rule": "hub_upload",
    },
    {
        "id": "quantized",
        "group": "post_training",
        "title": "Quantized version created (4-bit)",
        "rule": "quantized_model",
    },
    {"id": "docs", "group": "post_training", "title": "Documentation updated"},
    {"id": "demo_notebook", "group": "post_training", "title": "Demo notebook created"},
]
PARAMS = ("min", "max", "suite", "category", "task", "metric", "path", "window", "preset_group")


@dataclass
class Item:
    id: str
    title: str
    group: str
    rule: str | None = None
    required: bool = True
    params: dict = field(default_factory=dict)

    @property
    def manual(self) -> bool:
        return self.rule is None


@dataclass
class Measure:
    status: str  # pass | fail | pending (nothing to measure yet)
    value: str = ""
    detail: str = ""
    when: float | None = None  # time of the evidence


@dataclass
class ItemStatus:
    id: str
    title: str
    group: str
    kind: str  # auto | manual
    required: bool
    status: str  # pass | fail | pending
    value: str = ""
    detail: str = ""
    when: float | None = None
    changed_at: float | None = None
    ticked: bool = False
    note: str = ""
    ticked_at: float | None = None
    measured: str | None = None  # an automatic item's own status when it was ticked by hand

    @property
    def ok(self) -> bool:
        return self.status == "pass"


# -- the run's evidence ------------------------------------------------------------------


class Sources:
    """What the rules look at, read once per evaluation of the checklist."""

    def __init__(self, run_dir: Path, config=None, state: dict | None = None) -> None:
        from engine.run.events import dedupe_steps, read_events

        self.run_dir = Path(run_dir)
        self.config = config
        events = RunDir(self.run_dir).events
        self.records = read_events(events).records if events.is_file() else []
        self.steps = dedupe_steps(self.records)
        self.evals = [r for r in self.records if r.get("kind") == "eval"]
        self.output_dir = output_dir_of(self.run_dir, self.records)
        self.results = read_eval_results(self.run_dir)
        health = getattr(config, "health", None)
        self.spike_factor = getattr(health, "spike_factor", 1.5)
        self.spike_window = getattr(health, "spike_window", 50)

    def losses(self) -> list[tuple[dict, float]]:
        return [(r, _num(r.get("loss"))) for r in self.steps if "loss" in r]

    def checkpoints(self):
        from engine.run.checkpoints import scan

        return scan(self.output_dir) if self.output_dir else ([], [])


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
    return Measure("pass" if ok else "fail", value, detail, pts[-1][0].get("t"))


def _oom(text: str) -> bool:
    t = text.lower()
    return "out of memory" in t or "outofmemory" in t or "oom" in t.split()


def rule_no_oom(src: Sources, item: Item) -> Measure:
    hits = [
        r
        for r in src.records
        if (r.get("kind") == "end" and _oom(f"{r.get('message', '')} {r.get('traceback', '')}"))
        or (
            r.get("kind") == "alert"
            and ("oom" in str(r.get("rule", "")).lower() or _oom(str(r.get("message", ""))))
        )
    ]
    if hits:
        r = hits[-1]
        return Measure("fail", f"{len(hits)} OOM record(s)", str(r.get("message", ""))[:200], r.get("t"))
    if not src.steps:
        return Measure("pending", detail="no training steps logged yet")
    return Measure("pass", f"{len(src.steps)} steps, no OOM", when=src.steps[-1].get("t"))


def rule_checkpoints_saved(src: Sources, item: Item) -> Measure:
    saves = [r for r in src.records if r.get("kind") == "save"]
    if not saves:
        return Measure("pending", detail="no checkpoint saved yet")
    complete, _ = src.checkpoints()
    paths = {c.path.resolve() for c in complete}
    newest = Path(saves[-1]["path"])
    ok = newest.resolve() in paths
    value = f"{len(saves)} saved, newest {newest.name} {'complete' if ok else 'MISSING or incomplete'}"
    return Measure("pass" if ok else "fail", value, str(newest), saves[-1].get("t"))


def rule_all_checkpoints_saved(src: Sources, item: Item) -> Measure:
    saves = [r for r in src.records if r.get("kind") == "save"]
    if not saves:
        return Measure("pending", detail="no checkpoint saved yet")
    removed = {
        Path(r["path"]).resolve()
        for r in src.records
        if r.get("kind") == "checkpoint_removed" and r.get("path")
    }
    complete, torn = src.checkpoints()
    present = {c.path.resolve() for c in complete}
    saved = {Path(r["path"]).resolve() for r in saves}
    kept = saved & present
    gone = saved - present - removed
    torn_alerts = [r for r in src.records if r.get("kind") == "alert" and r.get("rule") == "torn_checkpoint"]
    ok = not gone and not torn and not torn_alerts
    value = f"{len(saved)} saved: {len(kept)} on disk, {len(saved & removed)} removed by retention"
    problems = [f"missing {p.name}" for p in sorted(gone)] + [f"torn {p.name}" for p in torn]
    problems += [str(r.get("message", "")) for r in torn_alerts]
    return Measure("pass" if ok else "fail", value, "; ".join(problems)[:300], saves[-1].get("t"))


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
        f"mean loss of the last {w} logged steps (step {pts[-1][0]['step']})",
        pts[-1][0].get("t"),
    )


def rule_val_perplexity(src: Sources, item: Item) -> Measure:
    if not src.evals:
        return Measure("pending", detail="no evaluation logged (set val_set_size and eval_steps)")
    r = src.evals[-1]
    ppl = _num(r.get("perplexity", math.exp(min(_num(r.get("eval_loss")), 50))))
    return _bounded(ppl, item, f"eval at step {r.get('step')}", r.get("t"))


def _spikes(pts: list[tuple[dict, float]], src: Sources) -> list[int]:
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
            out.append(pts[i][0]["step"])
    return out


def rule_no_spikes(src: Sources, item: Item) -> Measure:
    pts = src.losses()
    if len(pts) < 2:
        return Measure("pending", detail="fewer than 2 logged steps")
    nonfinite = [r["step"] for r, v in pts if not math.isfinite(v)]
    spikes = _spikes(pts, src)
    alerts = [
        r
        for r in src.records
        if r.get("kind") == "alert"
        and any(k in str(r.get("rule", "")).lower() for k in ("spike", "nan", "diverg"))
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
        problems.append(f"{len(alerts)} alert(s): {alerts[-1].get('rule')}")
    value = f"{len(spikes)} spike(s), {len(nonfinite)} non-finite, {len(alerts)} alert(s)"
    return Measure("fail" if problems else "pass", value, "; ".join(problems), pts[-1][0].get("t"))


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
    return Measure(
        "pending", detail="no quantized folder yet (leviathan-cockpit quantize DIR -o OUT --type nf4)"
    )


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
RULE_PARAMS = {"eval_score": ("suite",), "lmeval": ("task",)}


# -- items from the config ---------------------------------------------------------------


def build_items(config=None) -> list[Item]:
    """The defaults with the config's ``checklist`` section applied."""
    section = getattr(config, "checklist", None)
    persona = getattr(getattr(config, "evaluation", None), "persona", "Leviathan")
    specs = {d["id"]: dict(d) for d in DEFAULT_ITEMS} if getattr(section, "defaults", True) else {}
    for i, over in enumerate(getattr(section, "items", []) or []):
        o = over.model_dump(exclude_none=True) if hasattr(over, "model_dump") else dict(over)
        where = f"checklist.items[{i}] ({o.get('id')})"
        if o.get("enabled") is False:
            specs.pop(o["id"], None)
            continue
        o.pop("enabled", None)
        if o["id"] not in specs and not o.get("title"):
            raise UserError(
                f"{where}: a new checklist item needs a `title`",
                "add title: (and rule:, or none for a manual item)",
            )
        specs[o["id"]] = {**specs.get(o["id"], {}), **o}
    items = []
    for s in specs.values():
        rule = s.get("rule")
        if rule is not None and rule not in RULES:
            raise UserError(
                f"checklist item `{s['id']}`: unknown rule `{rule}`", f"rules: {', '.join(RULES)}"
            )
        for need in RULE_PARAMS.get(rule, ()):
            if not s.get(need):
                raise UserError(
                    f"checklist item `{s['id']}`: rule {rule} needs `{need}`", f"add {need}: to the item"
                )
        params = {k: s[k] for k in PARAMS if s.get(k) is not None}
        try:
            title = s["title"].format(persona=persona, **params)
        except (KeyError, ValueError, IndexError):
            title = s["title"]
        items.append(
            Item(s["id"], title, s.get("group") or "post_training", rule, s.get("required", True), params)
        )
    return items


# -- state -------------------------------------------------------------------------------


@contextmanager
def _locked(run_dir: Path):
    """Serialise read-modify-write of checklist.json between the cockpit and the CLI."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".checklist.lock", "a") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        yield


def load_state(run_dir: str | Path) -> dict:
    state = read_json(Path(run_dir) / STATE_FILE) or {}
    state.setdefault("version", 1)
    state.setdefault("items", {})
    return state


def _update(run_dir: Path, change: Callable[[dict], None]) -> dict:
    with _locked(run_dir):
        state = load_state(run_dir)
        change(state)
        state["updated_at"] = time.time()
        atomic_write_json(run_dir / STATE_FILE, state)
        return state


def _run_dir(run_dir: str | Path) -> Path:
    p = Path(run_dir)
    if p.name == EVENTS:
        p = p.parent
    if not p.is_dir():
        raise UserError(f"{run_dir}: no such run folder", "give a run folder such as logs/<run-name>")
    return p


def tick(run_dir: str | Path, item_id: str, note: str | None = None, done: bool = True, config=None) -> None:
    """Tick (or untick) an item by hand, with an optional note."""
    run_dir = _run_dir(run_dir)
    ids = [i.id for i in build_items(config if config is not None else _config(run_dir))]
    if item_id not in ids:
        raise UserError(f"no checklist item `{item_id}`", f"items: {', '.join(ids)}")

    def change(state):
        entry = state["items"].setdefault(item_id, {})
        entry.update(ticked=done, ticked_at=time.time() if done else None)
        if note is not None or not done:
            entry["note"] = note or ""

    _update(run_dir, change)


def _config(run_dir: Path):
    from engine.config.saved_config import run_config

    return run_config(run_dir)


def evaluate(run_dir: str | Path, config=None, *, save: bool = True) -> list[ItemStatus]:
    """Measure every item now; keeps the ticks, and when each status last changed."""
    run_dir = _run_dir(run_dir)
    config = config if config is not None else _config(run_dir)
    items = build_items(config)
    now = time.time()
    out: list[ItemStatus] = []

    def change(state):
        src = Sources(run_dir, config, state)
        out.clear()
        for item in items:
            prev = state["items"].get(item.id, {})
            m = Measure("pending", detail="tick by hand") if item.manual else RULES[item.rule](src, item)
            measured = m.status
            status = "pass" if prev.get("ticked") else measured
            changed = prev.get("changed_at") if prev.get("status") == status else now
            st = ItemStatus(
                item.id,
                item.title,
                item.group,
                "manual" if item.manual else "auto",
                item.required,
                status,
                m.value,
                m.detail,
                m.when,
                changed,
                bool(prev.get("ticked")),
                prev.get("note", ""),
                prev.get("ticked_at"),
                None if item.manual else measured,
            )
            out.append(st)
            keep = {k: prev[k] for k in ("ticked", "note", "ticked_at") if k in prev}
            state["items"][item.id] = {
                **keep,
                "status": status,
                "measured": st.measured,
                "value": m.value,
                "detail": m.detail,
                "when": m.when,
                "changed_at": changed,
                "checked_at": now,
            }

    if save:
        _update(run_dir, change)
    else:
        change(load_state(run_dir))
    return out


def failing(items: list[ItemStatus]) -> list[ItemStatus]:
    return [i for i in items if i.required and not i.ok]


# -- command line ------------------------------------------------------------------------

GLYPH = {"pass": "[x]", "fail": "[!]", "pending": "[ ]"}


def _ago(t: float | None) -> str:
    if not t:
        return ""
    s = max(0, time.time() - t)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{int(s // n)}{unit} ago"
    return f"{int(s)}s ago"


def format_items(items: list[ItemStatus]) -> str:
    lines = []
    for group in dict.fromkeys(i.group for i in items):
        lines.append(f"{GROUPS.get(group, group)}:")
        for i in (i for i in items if i.group == group):
            tail = i.value
            if i.ticked:
                tail = (
                    "ticked by hand"
                    + (f": {i.note}" if i.note else "")
                    + (f" (measured: {i.measured})" if i.measured else "")
                )
            elif i.status != "pass" and i.detail and not i.value:
                tail = i.detail
            opt = "" if i.required else " (optional)"
            when = _ago(i.ticked_at if i.ticked else i.when)
            lines.append(
                f"  {GLYPH[i.status]} {i.title}{opt}"
                + (f"  -- {tail}" if tail else "")
                + (f"  [{when}]" if when else "")
            )
    done = sum(i.ok for i in items)
    bad = failing(items)
    lines.append(f"{done}/{len(items)} passed; {len(bad)} required item(s) not passed")
    return "\n".join(lines)


def add_checklist_args(p) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (logs/<run-name>)")
    p.add_argument(
        "--group", choices=sorted(GROUPS), help="only this group (validation: the 10%% run's gate)"
    )
    p.add_argument("--tick", metavar="ID", help="tick an item by hand")
    p.add_argument("--untick", metavar="ID", help="take a tick back")
    p.add_argument("--note", metavar="TEXT", help="a note for --tick")
    p.add_argument("--json", action="store_true", help="print the items as JSON")


def checklist_main(args) -> int:
    run_dir = _run_dir(args.run_dir)
    config = _config(run_dir)
    if args.tick:
        tick(run_dir, args.tick, args.note, True, config)
    if args.untick:
        tick(run_dir, args.untick, None, False, config)
    items = evaluate(run_dir, config)
    if args.group:
        items = [i for i in items if i.group == args.group]
    if args.json:
        import json

        print(json.dumps([asdict(i) for i in items], indent=1))
    else:
        print(format_items(items))
    if failing(items):
        print(f"{len(failing(items))} required item(s) not passed", file=sys.stderr)
        return 1
    return 0
