"""``check --show-masks N``: the first rows of each dataset as the model sees them.

Built on the per-row (input_ids, labels) that preparation produces, so every row type shows
the tokens that really carry loss. Text mode highlights trained tokens (colour on a terminal,
``[[...]]`` otherwise); ``--json`` writes one object a line:
``{"file": PATH, "line": N, "text": RENDERED, "trained": [SPAN, ...]}``, each SPAN the decoded
text (special tokens kept) of one maximal run of consecutive trained tokens.
"""

from __future__ import annotations

import json
import sys

from engine.data.masks import IGNORE

ON, OFF = "\x1b[1;30;42m", "\x1b[0m"  # trained: black on green, like Axolotl's --debug


def runs(ids: list[int], labels: list[int]) -> list[tuple[bool, list[int]]]:
    """Maximal runs of consecutive tokens, each with whether it carries loss."""
    out: list[tuple[bool, list[int]]] = []
    for tid, lab in zip(ids, labels, strict=True):
        trained = lab != IGNORE
        if out and out[-1][0] == trained:
            out[-1][1].append(tid)
        else:
            out.append((trained, [tid]))
    return out


def row_record(tokenizer, file: str, line: int, ids: list[int], labels: list[int]) -> dict:
    spans = [tokenizer.decode(r, skip_special_tokens=False) for t, r in runs(ids, labels) if t]
    return {
        "file": file,
        "line": line,
        "text": tokenizer.decode(ids, skip_special_tokens=False),
        "trained": spans,
    }


def spans(tokenizer, ids: list[int], labels: list[int]) -> list[tuple[bool, str]]:
    """The row's text in maximal runs, each with whether it carries loss (the cockpit's Data tab)."""
    return [(t, tokenizer.decode(r, skip_special_tokens=False)) for t, r in runs(ids, labels)]


def first_rows(config, tokenizer, n: int):
    """(dataset spec, row, ids, labels, stats) for the first ``n`` good rows of each dataset."""
    from engine.data.data import Stats
    from engine.data.prepare import scan_rows
    from engine.data.prompt_formats import RowEncoder

    encoder = RowEncoder(tokenizer)  # chat, alpaca and completion rows alike
    for spec in config.datasets:
        one = config.model_copy(update={"datasets": [spec]})
        stats = Stats()
        for shown, (item, ids, labels) in enumerate(scan_rows(one, encoder, stats), 1):
            yield spec, item, ids, labels, stats
            if shown >= n:
                break


def highlighted(tokenizer, ids: list[int], labels: list[int], color: bool) -> str:
    parts = []
    for trained, text in spans(tokenizer, ids, labels):
        if trained:
            text = f"{ON}{text}{OFF}" if color else f"[[{text}]]"
        parts.append(text)
    return "".join(parts)


def show_masks(config, tokenizer, n: int, as_json: bool, out=None) -> int:
    """Print the first ``n`` good rows of each dataset; bad ones among them go to stderr."""
    from engine.data.data import Stats
    from engine.data.prepare import scan_rows
    from engine.data.prompt_formats import RowEncoder

    out = out or sys.stdout
    color = not as_json and hasattr(out, "isatty") and out.isatty()
    encoder = RowEncoder(tokenizer)  # chat, alpaca and completion rows alike
    if not as_json:
        legend = f"{ON}trained{OFF}" if color else "[[trained]]"
        print(f"trained tokens shown as {legend}; the rest carries no loss", file=out)
    for spec in config.datasets:
        one = config.model_copy(update={"datasets": [spec]})
        stats = Stats()
        for shown, (item, ids, labels) in enumerate(scan_rows(one, encoder, stats), 1):
            if as_json:
                print(
                    json.dumps(row_record(tokenizer, item.file, item.line, ids, labels), ensure_ascii=False),
                    file=out,
                )
            else:
                trained = sum(1 for x in labels if x != IGNORE)
                print(f"\n--- {item.file}:{item.line}  ({len(ids)} tokens, {trained} trained)", file=out)
                print(highlighted(tokenizer, ids, labels, color), file=out)
            if shown >= n:
                break
        for f, line, why in stats.bad:
            print(f"{f}:{line}: bad row: {why}", file=sys.stderr)
        for note in stats.notes_report():
            print(f"note: {note.strip()}", file=sys.stderr)
    return 0
