"""The model card of a merged model, written from its run folder alone.

Base model, data mix by ``_category`` (the run log's ``data`` record), settings (the run's
``config.yaml``), final metrics (the run log) and checklist results (``checklist.json``) when
there are any. ``leviathan-cockpit push`` uploads it as README.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.run import lineage, records
from engine.run.rundir import RunDir

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
    gate: str | None = None  # the 10% run's gate: passed, or overridden and why
    damage: list[str] = field(default_factory=list)  # records lost (seals), a checklist restored


def summarize_run(run_dir: str | Path | None) -> RunSummary:
    """What the card needs from a run folder; an empty summary when there is none."""
    s = RunSummary(Path(run_dir) if run_dir else None)
    if not run_dir:
        return s
    from engine.evaluate import checklist_state
    from engine.run.chat_log import chat_damage
    from engine.run.events import LogContents, damage_said, dedupe_steps, read_events
    from engine.run.rebuild import lost_steps
    from engine.run.rundir import output_dir_of
    from engine.run.seal import check

    s.config = lineage.run_config(run_dir)
    try:
        log = read_events(RunDir(run_dir).events)
    except OSError:
        log = LogContents(damage=check(RunDir(run_dir).events, "run log"))
    raw = log.records
    state, restored = checklist_state.load(run_dir)
    s.damage = damage_said(log)
    if s.damage:  # the steps up to the last save, from its trainer_state.json
        rebuilt, said = lost_steps(output_dir_of(run_dir, raw), raw)
        raw, s.damage = raw + rebuilt, s.damage + ([said] if said else [])
    s.damage += chat_damage(run_dir) + restored
    typed = records.decode_all(raw)
    data = [r for r in typed if isinstance(r, records.Data)]
    if data:
        s.by_category = dict(data[-1].by_category or {})
        s.rows, s.val_rows = data[-1].rows, data[-1].val_rows
    steps = [r for r in records.decode_all(dedupe_steps(raw)) if isinstance(r, records.Step)]
    if steps:
        last = steps[-1]
        s.final.update(step=last.step, loss=last.loss, epoch=last.epoch, tokens=last.tokens)
    evals = [r for r in typed if isinstance(r, records.Eval)]
    if evals:
        s.final.update(eval_step=evals[-1].step, eval_loss=evals[-1].eval_loss)
        s.final["perplexity"] = evals[-1].perplexity
    ends = [r for r in typed if isinstance(r, records.End)]
    if ends:
        s.final["status"] = ends[-1].status
    starts = [r for r in typed if isinstance(r, records.Start)]
    if starts:
        s.final["device"] = starts[-1].device
    s.final["train_seconds"] = _train_seconds(typed)
    s.checklist = checklist_rows(state) if state.get("items") else read_checklist(RunDir(run_dir).checklist)
    s.gate = _gate_line(state)
    return s


def _gate_line(state: dict) -> str | None:
    from engine.evaluate.gate import describe

    return describe(state.get("gate"))


def _train_seconds(typed: list[records.Record]) -> float | None:
    # Sum each process's start..end span, so the gap before a resume does not count.
    total, began = 0.0, None
    for r in typed:
        if isinstance(r, records.Start):
            began = r.t
        elif isinstance(r, records.End) and began is not None:
            total += r.t - began
            began = None
    return total or None


def read_checklist(path: Path) -> list[tuple[str, str, str]]:
    """(check, result, detail) rows from checklist.json, whatever shape of list or mapping it has."""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return checklist_rows(data)


def checklist_rows(data) -> list[tuple[str, str, str]]:
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
    info = lineage.read_info(Path(model_dir))
    cfg = summary.config
    base = info.get("base_model_config") or cfg.get("base_model") or info.get("base_model") or "unknown"
    vision = bool(info.get("vision"))
    out = _header(info, cfg, base, vision, repo_id)
    out += _data_section(summary)
    out += _settings_section(cfg)
    out += _results_section(summary.final)
    if summary.gate:
        out += ["## Gate", "", summary.gate, ""]
    if summary.damage:  # the results above were read from what was left
        out += ["## Records lost", "", *(f"- {d}" for d in summary.damage), ""]
    out += _gguf_section(summary.run_dir)
    if summary.checklist:
        out += ["## Checklist", "", "| check | result | detail |", "|---|---|---|"]
        out += [f"| {n} | {r} | {d} |" for n, r, d in summary.checklist]
        out.append("")
    out += _use_section(repo_id, vision)
    return "\n".join(out)


def _header(info: dict, cfg: dict, base: str, vision: bool, repo_id: str) -> list[str]:
    """The hub's front matter, the title and what the model is."""
    import yaml

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
    return out


def _data_section(summary: RunSummary) -> list[str]:
    out = ["## Training data", ""]
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
    return out


def _settings_section(cfg: dict) -> list[str]:
    out = ["## Settings", ""]
    settings = [(k, cfg[k]) for k in SETTINGS if k in cfg and cfg[k] is not None]
    if settings:
        out += ["| key | value |", "|---|---|"] + [f"| `{k}` | {_fmt(v)} |" for k, v in settings]
    else:
        out.append("The run's config.yaml was not found.")
    out.append("")
    return out


def _results_section(f: dict) -> list[str]:
    out = ["## Results", ""]
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
    return out


def _gguf_section(run_dir: Path | None) -> list[str]:
    """The run's newest verified GGUF export (`export gguf`): files, types, sizes, the check."""
    records = [r for r in lineage.step_outputs(run_dir, "export_gguf") if r.get("verified")]
    if not records:
        return []
    out = [
        "## GGUF (llama.cpp, Ollama)",
        "",
        "Converted with llama.cpp's converter; every tensor read back, dequantized and compared with "
        "these weights (largest error per storage type); where llama-cpp-python was installed, each file "
        "run by llama.cpp on the identity prompts and compared with these weights' logits and answers:",
        "",
        "| file | type | size | check | llama.cpp against these weights |",
        "|---|---|---:|---|---|",
    ]
    for f in records[0].get("files") or []:
        by_type = (f.get("check") or {}).get("by_type") or {}
        errs = ", ".join(f"{t} {v['max_abs_err']:.1e}" for t, v in sorted(by_type.items()))
        out.append(
            f"| `{Path(f['path']).name}` | {f['quant']} | {lineage.human_size(f.get('size_bytes') or 0)} | {errs} "
            f"| {_runtime_cell(f.get('runtime') or {})} |"
        )
    if records[0].get("modelfile"):
        out += ["", "With the Modelfile written beside them: `ollama create NAME -f Modelfile`."]
    return out + [""]


def _runtime_cell(r: dict) -> str:
    if r.get("ok") is None:
        return "not run (llama-cpp-python not installed)"
    same = sum(a["same"] for a in r.get("answers") or [])
    return (
        f"tokens equal {r['tokens_equal']}/{r['prompts']}; logits max diff {r['max_diff']:.1e}, "
        f"top-1 {r['top1']:.0%}; identity answers equal {same}/{len(r.get('answers') or [])}"
    )


def _use_section(repo_id: str, vision: bool) -> list[str]:
    auto = "AutoModelForImageTextToText" if vision else "AutoModelForCausalLM"
    return [
        "## Use",
        "",
        "```python",
        f"from transformers import {auto}, AutoTokenizer",
        "",
        f'tok = AutoTokenizer.from_pretrained("{repo_id}")',
        f'model = {auto}.from_pretrained("{repo_id}", dtype="auto", device_map="auto")',
        'messages = [{"role": "user", "content": "Who are you?"}]',
        "inputs = tok.apply_chat_template(",
        '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True',
        ").to(model.device)",
        "out = model.generate(**inputs, max_new_tokens=128)",
        'print(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
        "",
        "```bash",
        f"vllm serve {repo_id} --dtype bfloat16 --max-model-len 4096",
        "```",
        "",
    ]


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
