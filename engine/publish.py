"""Publish a merged model to the Hugging Face Hub with a model card written from its run.

The card says what the run did, from the run folder alone: the base model, the data mix by
``_category`` (the run log's ``data`` record), the settings (the run's ``config.yaml``), the
final metrics (the run log), and the checklist results (``checklist.json``) when there are
any. ``dry_run`` lists what would be sent and the card, and needs neither a token nor a
network. A real push checks the token against the Hub before it writes anything; the card
goes into the folder through a temporary file and a rename, then one ``upload_folder``
commit sends it all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engine import lineage
from engine.errors import UserError
from engine.jobs import Progress, null_progress

CARD_MARK = "<!-- leviathan-cockpit model card: `leviathan-cockpit push` rewrites this file -->"

# Settings shown on the card, in this order, when the run's config has them.
SETTINGS = (
    "adapter",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_linear",
    "lora_target_modules",
    "load_in_4bit",
    "load_in_8bit",
    "sequence_len",
    "sample_packing",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "num_epochs",
    "max_steps",
    "learning_rate",
    "lr_scheduler",
    "warmup_steps",
    "warmup_ratio",
    "optimizer",
    "weight_decay",
    "max_grad_norm",
    "val_set_size",
    "chat_template",
    "seed",
)


@dataclass
class RunSummary:
    run_dir: Path | None = None
    config: dict = field(default_factory=dict)
    by_category: dict = field(default_factory=dict)
    rows: int | None = None
    val_rows: int | None = None
    final: dict = field(default_factory=dict)
    checklist: list[tuple[str, str, str]] = field(default_factory=list)


def summarize_run(run_dir: str | Path | None) -> RunSummary:
    """What the card needs from a run folder; an empty summary when there is none."""
    s = RunSummary(Path(run_dir) if run_dir else None)
    if not run_dir:
        return s
    from engine.events import dedupe_steps, read_events

    s.config = lineage.run_config(run_dir)
    try:
        records = read_events(Path(run_dir) / "events.jsonl").records
    except OSError:
        records = []
    data = [r for r in records if r["kind"] == "data"]
    if data:
        s.by_category = dict(data[-1].get("by_category") or {})
        s.rows, s.val_rows = data[-1].get("rows"), data[-1].get("val_rows")
    steps = dedupe_steps(records)
    if steps:
        last = steps[-1]
        s.final.update(
            step=last["step"], loss=last.get("loss"), epoch=last.get("epoch"), tokens=last.get("tokens")
        )
    evals = [r for r in records if r["kind"] == "eval"]
    if evals:
        s.final.update(eval_step=evals[-1].get("step"), eval_loss=evals[-1].get("eval_loss"))
        s.final["perplexity"] = evals[-1].get("perplexity")
    ends = [r for r in records if r["kind"] == "end"]
    if ends:
        s.final["status"] = ends[-1].get("status")
    starts = [r for r in records if r["kind"] == "start"]
    if starts:
        s.final["device"] = starts[-1].get("device")
    s.final["train_seconds"] = _train_seconds(records)
    s.checklist = read_checklist(Path(run_dir) / "checklist.json")
    return s


def _train_seconds(records: list[dict]) -> float | None:
    # Sum each process's start..end span, so the gap before a resume does not count.
    total, began = 0.0, None
    for r in records:
        if r["kind"] == "start":
            began = r["t"]
        elif r["kind"] == "end" and began is not None:
            total += r["t"] - began
            began = None
    return total or None


def read_checklist(path: Path) -> list[tuple[str, str, str]]:
    """(check, result, detail) rows from checklist.json, whatever shape of list or mapping it has."""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    items = data.get("items", data.get("checks", data)) if isinstance(data, dict) else data
    rows = []
    if isinstance(items, dict):
        items = [{"name": k, **(v if isinstance(v, dict) else {"status": v})} for k, v in items.items()]
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        name = next((str(item[k]) for k in ("label", "name", "title", "id", "rule") if item.get(k)), "?")
        status = item.get("status", item.get("state", item.get("result")))
        if status is None:
            ok = item.get("passed", item.get("ok", item.get("done")))
            status = "pending" if ok is None else ("pass" if ok else "fail")
        detail = next((str(item[k]) for k in ("detail", "value", "message", "note") if item.get(k)), "")
        rows.append((name, str(status), detail))
    return rows


def _is_hub_id(name: str | None) -> bool:
    if not name or name.startswith(("builtin:", ".", "/", "~")) or Path(name).exists():
        return False
    parts = name.split("/")
    return len(parts) == 2 and all(parts)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return "-" if v is None else str(v)


def model_card(model_dir: str | Path, repo_id: str, summary: RunSummary) -> str:
    import yaml

    d = Path(model_dir)
    info = lineage.read_info(d)
    cfg = summary.config
    base = info.get("base_model_config") or cfg.get("base_model") or info.get("base_model") or "unknown"
    vision = bool(info.get("vision"))
    meta = {
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text" if vision else "text-generation",
        "tags": ["leviathan-cockpit", "trl", "sft", info.get("adapter") or cfg.get("adapter") or "lora"],
    }
    if _is_hub_id(base):
        meta["base_model"] = base
    if info.get("quantization"):
        meta["tags"].append(f"bitsandbytes-{info['quantization']}")
    name = repo_id.split("/")[-1]
    out = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", CARD_MARK, "", f"# {name}", ""]
    adapter = {"qlora": "QLoRA"}.get(info.get("adapter") or cfg.get("adapter"), "LoRA")
    out.append(
        f"A {adapter} fine-tune of `{base}` with its adapter merged into the weights, trained with "
        "leviathan-cockpit (TRL `SFTTrainer`)."
    )
    if info.get("step") is not None:
        out.append(f"Merged from checkpoint step {info['step']}.")
    if info.get("quantization"):
        out.append(f"Weights quantized with bitsandbytes `{info['quantization']}`; they load quantized.")
    if vision:
        out.append("The vision tower is the base model's, unchanged (training was text-only).")
    out.append("")

    out += ["## Training data", ""]
    if summary.by_category:
        total = sum(summary.by_category.values()) or 1
        out += ["| _category | rows | share |", "|---|---:|---:|"]
        for cat, n in sorted(summary.by_category.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"| {cat} | {n:,} | {100 * n / total:.1f}% |")
        out.append("")
        out.append(
            f"{summary.rows or total:,} training rows, {summary.val_rows or 0:,} held out for validation."
        )
    else:
        out.append("No run log was found for this model, so the data mix is unknown.")
    out.append("")

    out += ["## Settings", ""]
    settings = [(k, cfg[k]) for k in SETTINGS if k in cfg and cfg[k] is not None]
    if settings:
        out += ["| key | value |", "|---|---|"] + [f"| `{k}` | {_fmt(v)} |" for k, v in settings]
    else:
        out.append("The run's config.yaml was not found.")
    out.append("")

    out += ["## Results", ""]
    f = summary.final
    rows = [
        (
            "final training loss",
            f.get("loss"),
            f"step {f['step']}, epoch {_fmt(f.get('epoch'))}" if "step" in f else "",
        ),
        ("validation loss", f.get("eval_loss"), f"step {f['eval_step']}" if "eval_step" in f else ""),
        ("validation perplexity", f.get("perplexity"), ""),
        ("tokens trained", f.get("tokens"), ""),
        (
            "training time",
            _hms(f["train_seconds"]) if f.get("train_seconds") else None,
            f.get("device") or "",
        ),
        ("run status", f.get("status"), ""),
    ]
    rows = [r for r in rows if r[1] is not None]
    if rows:
        out += ["| metric | value | where |", "|---|---|---|"]
        out += [f"| {m} | {_fmt(v) if not isinstance(v, int) else f'{v:,}'} | {w} |" for m, v, w in rows]
    else:
        out.append("No metrics were found in the run log.")
    out.append("")

    if summary.checklist:
        out += ["## Checklist", "", "| check | result | detail |", "|---|---|---|"]
        out += [f"| {n} | {r} | {d} |" for n, r, d in summary.checklist]
        out.append("")

    out += [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer"
        if not vision
        else "from transformers import AutoModelForImageTextToText, AutoTokenizer",
        "",
        f'tok = AutoTokenizer.from_pretrained("{repo_id}")',
        f"model = {'AutoModelForImageTextToText' if vision else 'AutoModelForCausalLM'}"
        f'.from_pretrained("{repo_id}", dtype="auto", device_map="auto")',
        'messages = [{"role": "user", "content": "Who are you?"}]',
        "inputs = tok.apply_chat_template(",
        '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True',
        ").to(model.device)",
        "out = model.generate(**inputs, max_new_tokens=128)",
        'print(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
        "",
        "```bash",
        f"python -m vllm.entrypoints.openai.api_server --model {repo_id} --dtype bfloat16 --max-model-len 4096",
        "```",
        "",
    ]
    return "\n".join(out)


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@dataclass
class PushResult:
    repo_id: str
    files: list[tuple[str, int]]
    card: str
    card_written: bool
    dry_run: bool
    url: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(s for _, s in self.files)


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except Exception as e:  # HFValidationError: the message says which rule
        raise UserError(
            f"--repo-id {repo_id!r}: {e}", "use USER/NAME, e.g. my-user/leviathan-8b-v1"
        ) from None
    if repo_id.count("/") != 1:
        raise UserError(
            f"--repo-id {repo_id!r}: not USER/NAME", "use USER/NAME, e.g. my-user/leviathan-8b-v1"
        )
    return repo_id


def find_token(token: str | None = None) -> str | None:
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    from huggingface_hub import get_token

    return get_token()


def hub_error(e: Exception, repo_id: str) -> UserError | None:
    """A clear UserError for what the network or the Hub said, or None for a bug."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        return UserError("cannot reach the Hugging Face Hub: HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE")
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            return UserError(
                "the Hugging Face Hub refused the token (401)", "hf auth login, or set a valid HF_TOKEN"
            )
        if status == 403:
            return UserError(
                f"the token may not write to {repo_id} (403)",
                "use a token with write access, or your own USER/",
            )
        return UserError(
            f"the Hugging Face Hub answered {status}: {str(e).splitlines()[0]}", "try again later"
        )
    if isinstance(e, OSError) or any(c.__module__.split(".")[0].startswith("httpx") for c in type(e).__mro__):
        return UserError(
            f"cannot reach the Hugging Face Hub ({type(e).__name__}: {e})",
            "check the network (or proxy) and try again; nothing was uploaded",
        )
    return None


def push(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    run_dir: str | Path | None = None,
    message: str | None = None,
    new_card: bool = False,
    token: str | None = None,
    progress: Progress = null_progress,
) -> PushResult:
    from engine.quantize import check_model_dir

    progress(0.0, "checking the folder")
    src = check_model_dir(model_dir)
    check_repo_id(repo_id)
    info = lineage.read_info(src)
    if run_dir:
        run = lineage.find_run_dir(None, run_dir)
    elif info.get("run_dir") and (Path(info["run_dir"]) / "events.jsonl").is_file():
        run = Path(info["run_dir"])
    else:
        run = lineage.find_run_dir(info.get("checkpoint"))
    notes = [] if run else ["no run folder found: the card has no data mix, settings or metrics (--run-dir)"]
    card = model_card(src, repo_id, summarize_run(run))
    readme = src / "README.md"
    keep_theirs = readme.is_file() and CARD_MARK not in readme.read_text(errors="replace") and not new_card
    if keep_theirs:
        notes.append(
            "kept the folder's own README.md (pass --new-card to replace it with the generated card)"
        )
    files = [(n, s) for n, s in lineage.folder_files(src) if n != "README.md" or keep_theirs]
    if not keep_theirs:
        files.append(("README.md", len(card.encode())))
    files.sort()
    result = PushResult(repo_id, files, card, False, dry_run, notes=notes)
    if dry_run:
        return result

    tok = find_token(token)
    if not tok:
        raise UserError(
            "no Hugging Face token (HF_TOKEN is unset and `hf auth login` has not been run); nothing was written",
            "run `hf auth login`, or export HF_TOKEN=hf_... with write access",
        )
    from huggingface_hub import HfApi

    api = HfApi(token=tok)
    try:
        progress(0.05, "checking the token with the Hub")
        user = api.whoami()
        if not keep_theirs:
            lineage.write_text_atomic(readme, card)
            result.card_written = True
        progress(0.1, f"creating {repo_id}")
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        progress(0.15, f"uploading {lineage.human_size(result.total_bytes)}")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(src),
            repo_type="model",
            commit_message=message or f"Upload {src.name} with leviathan-cockpit",
            ignore_patterns=[".*", "**/.*"],
        )
    except Exception as e:
        err = hub_error(e, repo_id)
        if err is None:
            raise
        raise err from None
    result.url = str(url)
    lineage.record_step(run, "push", repo_id=repo_id, url=result.url, private=private, user=user.get("name"))
    progress(1.0, f"uploaded to {result.url}")
    return result
